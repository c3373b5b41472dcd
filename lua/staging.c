/* staging.c — what happens to a run's staging directory when the run
 * completes, and the trash that keeps its deletion off the critical path.
 *
 * A completed run's .jobvisor/staging/<runId> can be big (RESTORE_BACKUP
 * leaves the previous data/ there): deleting it file by file before the
 * result is reported costs a blocking unlink per file. Instead it is renamed
 * to .jobvisor/trash/<runId> (one rename, so the run completes at once) and
 * the next run on the instance empties the trash on a background thread
 * while its script runs. A run that ends (or is killed) mid-sweep leaves the
 * rest to the one after: the trash is only ever deleted, never read, so any
 * partial state is fine. Trash entries stay until a next run comes.
 *
 * Thread: the sweeper blocks all signals, touches only the trash through
 * descriptors it owns, and dies with the process at _exit; the job-run child
 * forks only to exec (monitor launch), so a sweeper holding a libc lock at
 * fork time does no harm. The confined file core does the deleting
 * (fsx_clear_dirfd: never follows a symlink). */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fsx.h"
#include "jobvisor/ident.h"
#include "quiet_thread.h"
#include "scriptdef.h"

#define TRASH_DIR ".jobvisor/trash"

void jv_staging_cleanup(struct jv_run_ctx *ctx)
{
	if (ctx->instance_fd < 0)
		return;
	struct fsx fx;
	fsx_init(&fx, ctx->instance_fd);
	if (!jv_run_id_valid(ctx->run_id))
		return;
	char from[256], to[256];
	snprintf(from, sizeof(from), ".jobvisor/staging/%s", ctx->run_id);
	snprintf(to, sizeof(to), TRASH_DIR "/%s", ctx->run_id);
	struct stat st;
	if (fsx_lstat(&fx, from, &st) < 0)
		return; /* no staging: nothing to do */
	bool removed;
	/* A leftover of the same run id (a kill mid-sweep) goes first. */
	fsx_remove_tree(&fx, to, &removed, NULL);
	int rc = fsx_mkdir(&fx, TRASH_DIR, 0700, true);
	int spfd = -1, dpfd = -1;
	const char *slast, *dlast;
	if (rc == 0)
		rc = fsx_parent(&fx, from, FSX_NO_SYMLINKS, &spfd, &slast);
	if (rc == 0)
		rc = fsx_parent(&fx, to, FSX_NO_SYMLINKS, &dpfd, &dlast);
	if (rc == 0 && renameat(spfd, slast, dpfd, dlast) < 0)
		rc = -errno;
	if (spfd >= 0)
		close(spfd);
	if (dpfd >= 0)
		close(dpfd);
	if (rc < 0)
		fsx_staging_clean(&fx, ctx->run_id); /* could not move it: delete it here */
}

static void *sweep(void *arg)
{
	int tfd = (int)(intptr_t)arg;
	fsx_clear_dirfd(tfd, NULL);
	close(tfd);
	return NULL;
}

void jv_trash_sweep_start(struct jv_run_ctx *ctx)
{
	if (ctx->instance_fd < 0)
		return;
	struct fsx fx;
	fsx_init(&fx, ctx->instance_fd);
	int tfd;
	if (fsx_open(&fx, TRASH_DIR, O_RDONLY | O_DIRECTORY, 0, FSX_NO_SYMLINKS, &tfd) < 0)
		return;
	struct fsx_list l;
	if (fsx_list_fd(tfd, &l) < 0 || l.n == 0) {
		fsx_list_free(&l);
		close(tfd);
		return; /* nothing to sweep: no thread */
	}
	fsx_list_free(&l);
	pthread_attr_t attr;
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	pthread_t th;
	int rc = jv_quiet_thread(&th, &attr, sweep, (void *)(intptr_t)tfd);
	pthread_attr_destroy(&attr);
	if (rc != 0)
		close(tfd); /* the next run tries again */
}
