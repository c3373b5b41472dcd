/* demo_world.c — the demo server's world directory: load, save, lock.
 *
 * Layout under the world dir (relative to the server's cwd):
 *   level.dat          one line of key=value (name, seed, ticks, saves)
 *   players.dat        a small text file
 *   region/r.K.0.dat   16 KiB of bytes derived from seed and ticks; one more
 *                      region appears every 5 saves (up to 8), so the world
 *                      grows and changes the way real worlds do
 *   session.lock       present while the server runs
 * Files are written to a temp name and renamed, like real servers do, but
 * without fsync: a demo world does not need to survive power loss. */
#include "demo.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define REGION_BYTES 16384
#define REGION_MAX 8

static int write_file(const char *dir, const char *name, const void *data, size_t len)
{
	char path[PATH_MAX], tmp[PATH_MAX];
	if (snprintf(path, sizeof(path), "%s/%s", dir, name) >= (int)sizeof(path) ||
	    snprintf(tmp, sizeof(tmp), "%s/%s.tmp", dir, name) >= (int)sizeof(tmp))
		return -ENAMETOOLONG;
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	const char *p = data;
	while (len > 0) {
		ssize_t n = write(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			int rc = -errno;
			close(fd);
			unlink(tmp);
			return rc;
		}
		p += n;
		len -= (size_t)n;
	}
	close(fd);
	if (rename(tmp, path) < 0) {
		int rc = -errno;
		unlink(tmp);
		return rc;
	}
	return 0;
}

static int ensure_dir(const char *path)
{
	if (mkdir(path, 0755) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

static void load_level(struct demo_world *w)
{
	char path[PATH_MAX];
	if (snprintf(path, sizeof(path), "%s/level.dat", w->dir) >= (int)sizeof(path))
		return;
	FILE *f = fopen(path, "re");
	if (!f)
		return;
	char line[256];
	while (fgets(line, sizeof(line), f)) {
		unsigned long long v;
		if (sscanf(line, "seed=%llu", &v) == 1)
			w->seed = v;
		else if (sscanf(line, "ticks=%llu", &v) == 1)
			w->ticks = v;
		else if (sscanf(line, "saves=%llu", &v) == 1)
			w->saves = (unsigned)v;
	}
	fclose(f);
}

int demo_world_open(struct demo_world *w, const char *dir)
{
	memset(w, 0, sizeof(*w));
	if (snprintf(w->dir, sizeof(w->dir), "%s", dir) >= (int)sizeof(w->dir))
		return -ENAMETOOLONG;
	snprintf(w->name, sizeof(w->name), "%s", "demo world");
	w->seed = ((uint64_t)getpid() << 20) ^ (uint64_t)time(NULL);
	int rc = ensure_dir(w->dir);
	if (rc)
		return rc;
	char region[PATH_MAX];
	if (snprintf(region, sizeof(region), "%s/region", w->dir) >= (int)sizeof(region))
		return -ENAMETOOLONG;
	if ((rc = ensure_dir(region)))
		return rc;
	load_level(w);
	char lock[64];
	int n = snprintf(lock, sizeof(lock), "pid=%ld\n", (long)getpid());
	return write_file(w->dir, "session.lock", lock, (size_t)n);
}

static void fill_region(uint64_t seed, uint64_t ticks, unsigned k, unsigned char *buf, size_t len)
{
	/* xorshift: cheap, deterministic, different per save. */
	uint64_t x = seed ^ (ticks * 0x9E3779B97F4A7C15ULL) ^ ((uint64_t)k << 32) ^ 1;
	for (size_t i = 0; i < len; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		buf[i] = (unsigned char)x;
	}
}

int demo_world_save(struct demo_world *w)
{
	w->saves++;
	char level[256];
	int n = snprintf(level, sizeof(level), "name=%s\nseed=%llu\nticks=%llu\nsaves=%u\n", w->name,
	                 (unsigned long long)w->seed, (unsigned long long)w->ticks, w->saves);
	int rc = write_file(w->dir, "level.dat", level, (size_t)n);
	if (rc)
		return rc;
	char players[128];
	n = snprintf(players, sizeof(players), "online=0\nmax=20\nlast_save_tick=%llu\n",
	             (unsigned long long)w->ticks);
	if ((rc = write_file(w->dir, "players.dat", players, (size_t)n)))
		return rc;
	char region_dir[PATH_MAX];
	if (snprintf(region_dir, sizeof(region_dir), "%s/region", w->dir) >= (int)sizeof(region_dir))
		return -ENAMETOOLONG;
	unsigned regions = 1 + w->saves / 5;
	if (regions > REGION_MAX)
		regions = REGION_MAX;
	unsigned char *buf = malloc(REGION_BYTES);
	if (!buf)
		return -ENOMEM;
	for (unsigned k = 0; k < regions && rc == 0; k++) {
		char name[32];
		snprintf(name, sizeof(name), "r.%u.0.dat", k);
		fill_region(w->seed, w->ticks, k, buf, REGION_BYTES);
		rc = write_file(region_dir, name, buf, REGION_BYTES);
	}
	free(buf);
	return rc;
}

void demo_world_close(struct demo_world *w)
{
	char path[PATH_MAX];
	if (snprintf(path, sizeof(path), "%s/session.lock", w->dir) < (int)sizeof(path))
		unlink(path);
}
