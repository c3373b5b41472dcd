/* test_fsx.c — the confined file core (lua/fsx.c): lexical checks, beneath
 * resolution with openat2 and with the O_NOFOLLOW walk, and every operation
 * refusing to touch anything outside the root. Each test snapshots the
 * "outside" directory and checks it is unchanged. */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fsapi_util.h"
#include "fsx.h"

static struct scratch S;
static char *outside_before;

static void setup(void)
{
	scratch_setup(&S);
	char p[PATH_MAX];
	/* A typical instance: builds/1, current -> builds/1, data/, and hostile links. */
	cr_assert(mkdir(inpath(&S, "builds", p), 0755) == 0);
	cr_assert(mkdir(inpath(&S, "builds/1", p), 0755) == 0);
	write_file(inpath(&S, "builds/1/server", p), "bin\n", 4);
	cr_assert(symlink("builds/1", inpath(&S, "current", p)) == 0);
	cr_assert(mkdir(inpath(&S, "data", p), 0755) == 0);
	write_file(inpath(&S, "data/world.dat", p), "world\n", 6);
	cr_assert(symlink(S.outside, inpath(&S, "abs_out", p)) == 0);
	cr_assert(symlink("../outside", inpath(&S, "rel_out", p)) == 0);
	cr_assert(symlink("../builds/1", inpath(&S, "data/up_in", p)) == 0);
	outside_before = snapshot(S.outside);
}

static void teardown(void)
{
	char *after = snapshot(S.outside);
	cr_expect_str_eq(after, outside_before, "the directory outside the root changed");
	free(after);
	free(outside_before);
	scratch_teardown(&S);
}

static struct fsx mkfx(bool walk)
{
	struct fsx fx;
	fsx_init(&fx, S.root_fd);
	fx.walk_only = walk;
	return fx;
}

TestSuite(fsx, .init = setup, .fini = teardown, .timeout = 30);

Test(fsx, norm_refuses_absolute_dotdot_empty_and_nul)
{
	char out[FSX_PATH_MAX];
	cr_expect_eq(fsx_norm("/etc/passwd", 11, out), FSX_EABSOLUTE);
	cr_expect_eq(fsx_norm("a/../../x", 9, out), FSX_EDOTDOT);
	cr_expect_eq(fsx_norm("..", 2, out), FSX_EDOTDOT);
	cr_expect_eq(fsx_norm("", 0, out), FSX_EEMPTY);
	cr_expect_eq(fsx_norm("a\0b", 3, out), FSX_EEMPTY);
	cr_expect(fsx_is_policy_error(FSX_EDOTDOT));
	cr_expect(!fsx_is_policy_error(-ENOENT));
	cr_expect(strstr(fsx_strerror(FSX_EDOTDOT), "'..'") != NULL);
}

Test(fsx, norm_collapses_slashes_and_dots)
{
	char out[FSX_PATH_MAX];
	cr_assert_eq(fsx_norm("./a//b/./c/", 11, out), 0);
	cr_expect_str_eq(out, "a/b/c");
	cr_assert_eq(fsx_norm("./", 2, out), 0);
	cr_expect_str_eq(out, ".");
	cr_assert_eq(fsx_norm("..foo/x..", 9, out), 0);
	cr_expect_str_eq(out, "..foo/x..");
}

Test(fsx, reserved_allows_only_staging_contents)
{
	cr_expect(fsx_reserved(".jobvisor"));
	cr_expect(fsx_reserved(".jobvisor/state.json"));
	cr_expect(fsx_reserved(".jobvisor/staging"));
	cr_expect(fsx_reserved(".jobvisor/staging/run1"));
	cr_expect(!fsx_reserved(".jobvisor/staging/run1/stage-1"));
	cr_expect(!fsx_reserved(".jobvisor/staging/run1/stage-1/a/b"));
	cr_expect(!fsx_reserved(".jobvisorx/a"));
	cr_expect(!fsx_reserved("data/.jobvisor"));
}

Test(fsx, follows_symlinks_that_stay_inside_in_both_modes)
{
	for (int walk = 0; walk < 2; walk++) {
		struct fsx fx = mkfx(walk);
		char *data;
		size_t len;
		cr_assert_eq(fsx_read(&fx, "current/server", 1024, &data, &len), 0, "walk=%d", walk);
		cr_expect_str_eq(data, "bin\n");
		free(data);
		cr_assert_eq(fsx_read(&fx, "data/up_in/server", 1024, &data, &len), 0, "walk=%d", walk);
		free(data);
	}
}

Test(fsx, refuses_symlinks_leading_outside_in_both_modes)
{
	for (int walk = 0; walk < 2; walk++) {
		struct fsx fx = mkfx(walk);
		char *data;
		size_t len;
		int fd;
		cr_expect_eq(fsx_read(&fx, "abs_out/secret.txt", 1024, &data, &len), FSX_EESCAPE,
		             "walk=%d", walk);
		cr_expect_eq(fsx_read(&fx, "rel_out/secret.txt", 1024, &data, &len), FSX_EESCAPE,
		             "walk=%d", walk);
		cr_expect_eq(fsx_open(&fx, "rel_out", O_PATH, 0, 0, &fd), FSX_EESCAPE);
		cr_expect_eq(fsx_write(&fx, "abs_out/new.txt", "x", 1, 0644), FSX_EESCAPE);
		cr_expect_eq(fsx_write(&fx, "rel_out/secret.txt", "x", 1, 0644), FSX_EESCAPE);
		cr_expect_eq(fsx_mkdir(&fx, "rel_out/newdir", 0755, true), FSX_EESCAPE);
		cr_expect_eq(fsx_open(&fx, "rel_out/x", O_WRONLY | O_CREAT, 0644, 0, &fd), FSX_EESCAPE);
	}
}

Test(fsx, no_symlinks_flag_refuses_even_inside_links)
{
	for (int walk = 0; walk < 2; walk++) {
		struct fsx fx = mkfx(walk);
		int fd;
		cr_expect_eq(fsx_open(&fx, "current/server", O_RDONLY, 0, FSX_NO_SYMLINKS, &fd),
		             FSX_ESYMLINK, "walk=%d", walk);
		cr_expect_eq(fsx_open(&fx, "current", O_RDONLY, 0, FSX_NOFOLLOW, &fd), FSX_ESYMLINK);
		cr_assert_eq(fsx_open(&fx, "current", O_PATH, 0, FSX_NOFOLLOW, &fd), 0);
		struct stat st;
		fstat(fd, &st);
		cr_expect(S_ISLNK(st.st_mode));
		close(fd);
	}
}

Test(fsx, walk_handles_loops_and_dotdot_in_targets)
{
	char p[PATH_MAX];
	cr_assert(symlink("loop2", inpath(&S, "loop1", p)) == 0);
	cr_assert(symlink("loop1", inpath(&S, "loop2", p)) == 0);
	cr_assert(symlink("../../..", inpath(&S, "data/climb", p)) == 0);
	for (int walk = 0; walk < 2; walk++) {
		struct fsx fx = mkfx(walk);
		int fd;
		cr_expect_eq(fsx_open(&fx, "loop1/x", O_RDONLY, 0, 0, &fd), -ELOOP, "walk=%d", walk);
		cr_expect_eq(fsx_open(&fx, "data/climb/outside", O_PATH, 0, 0, &fd), FSX_EESCAPE,
		             "walk=%d", walk);
		cr_assert_eq(fsx_open(&fx, ".", O_RDONLY | O_DIRECTORY, 0, 0, &fd), 0);
		close(fd);
	}
}

Test(fsx, write_is_atomic_and_readable)
{
	struct fsx fx = mkfx(false);
	cr_assert_eq(fsx_write(&fx, "data/cfg.txt", "one", 3, 0640), 0);
	cr_assert_eq(fsx_write(&fx, "data/cfg.txt", "two!", 4, 0640), 0);
	char *d;
	size_t len;
	cr_assert_eq(fsx_read(&fx, "data/cfg.txt", 100, &d, &len), 0);
	cr_expect_eq(len, 4);
	cr_expect_str_eq(d, "two!");
	free(d);
	cr_expect_eq(fsx_read(&fx, "data/cfg.txt", 3, &d, &len), -EFBIG);
	struct fsx_list l;
	cr_assert_eq(fsx_list(&fx, "data", &l), 0);
	for (size_t i = 0; i < l.n; i++)
		cr_expect(strstr(l.v[i].name, ".tmp.") == NULL, "temp file left: %s", l.v[i].name);
	fsx_list_free(&l);
}

Test(fsx, read_refuses_fifo_without_blocking)
{
	char p[PATH_MAX];
	cr_assert(mkfifo(inpath(&S, "data/fifo", p), 0644) == 0);
	struct fsx fx = mkfx(false);
	char *d;
	size_t len;
	cr_expect_eq(fsx_read(&fx, "data/fifo", 100, &d, &len), -EINVAL);
	char hex[JV_SHA256_HEX];
	cr_expect_eq(fsx_sha256(&fx, "data/fifo", hex, NULL, NULL), -EINVAL);
}

Test(fsx, list_is_sorted_with_types)
{
	struct fsx fx = mkfx(false);
	struct fsx_list l;
	cr_assert_eq(fsx_list(&fx, ".", &l), 0);
	cr_assert(l.n >= 5);
	for (size_t i = 1; i < l.n; i++)
		cr_expect(strcmp(l.v[i - 1].name, l.v[i].name) < 0);
	bool saw_link = false;
	for (size_t i = 0; i < l.n; i++)
		if (!strcmp(l.v[i].name, "current"))
			saw_link = S_ISLNK(l.v[i].st.st_mode);
	cr_expect(saw_link);
	fsx_list_free(&l);
	cr_expect_eq(fsx_list(&fx, "rel_out", &l), FSX_EESCAPE);
}

Test(fsx, mkdir_with_parents_and_existing)
{
	struct fsx fx = mkfx(true);
	cr_assert_eq(fsx_mkdir(&fx, "a/b/c", 0755, true), 0);
	cr_assert_eq(fsx_mkdir(&fx, "a/b/c", 0755, true), 0);
	cr_expect_eq(fsx_mkdir(&fx, "a/b/c", 0755, false), -EEXIST);
	cr_expect_eq(fsx_mkdir(&fx, "x/y", 0755, false), -ENOENT);
	cr_expect_eq(fsx_mkdir(&fx, "data/world.dat/z", 0755, true), -ENOTDIR);
	cr_assert_eq(fsx_mkdir(&fx, "current/plugins", 0755, true), 0);
	struct stat st;
	char p[PATH_MAX];
	cr_expect(stat(inpath(&S, "builds/1/plugins", p), &st) == 0 && S_ISDIR(st.st_mode));
}

Test(fsx, remove_is_idempotent_and_keeps_nonempty_dirs)
{
	struct fsx fx = mkfx(false);
	bool removed;
	cr_assert_eq(fsx_remove(&fx, "data/world.dat", &removed), 0);
	cr_expect(removed);
	cr_assert_eq(fsx_remove(&fx, "data/world.dat", &removed), 0);
	cr_expect(!removed);
	cr_expect_eq(fsx_remove(&fx, "builds", &removed), -ENOTEMPTY);
	cr_expect_eq(fsx_remove(&fx, ".", &removed), FSX_EROOT);
	/* Removing a symlink removes the link, not its target. */
	cr_assert_eq(fsx_remove(&fx, "rel_out", &removed), 0);
	cr_expect(removed);
}

Test(fsx, remove_tree_never_root_never_through_symlinks)
{
	char p[PATH_MAX];
	struct fsx fx = mkfx(false);
	bool removed;
	cr_assert_eq(fsx_mkdir(&fx, "data/deep/er/est", 0755, true), 0);
	write_file(inpath(&S, "data/deep/er/f", p), "f", 1);
	cr_assert(symlink(S.outside, inpath(&S, "data/deep/er/out_link", p)) == 0);
	cr_assert(symlink("../../../rel_out", inpath(&S, "data/deep/er/out_rel", p)) == 0);
	cr_assert(chmod(inpath(&S, "data/deep/er", p), 0555) == 0);
	cr_expect_eq(fsx_remove_tree(&fx, ".", &removed, NULL), FSX_EROOT);
	cr_expect_eq(fsx_remove_tree(&fx, "rel_out/secret.txt", &removed, NULL), FSX_ESYMLINK);
	cr_expect_eq(fsx_remove_tree(&fx, "current/server", &removed, NULL), FSX_ESYMLINK);
	cr_assert_eq(fsx_remove_tree(&fx, "data", &removed, NULL), 0);
	cr_expect(removed);
	struct stat st;
	cr_expect(lstat(inpath(&S, "data", p), &st) < 0 && errno == ENOENT);
	/* A symlink as the last component goes, its target stays. */
	cr_assert_eq(fsx_remove_tree(&fx, "current", &removed, NULL), 0);
	cr_expect(stat(inpath(&S, "builds/1/server", p), &st) == 0);
	cr_assert_eq(fsx_remove_tree(&fx, "nothing/here", &removed, NULL), 0);
	cr_expect(!removed);
}

static bool cancel_after_two(void *arg, uint64_t done, uint64_t total)
{
	int *n = arg;
	return ++*n > 2;
}

Test(fsx, remove_tree_is_cancellable)
{
	struct fsx fx = mkfx(false);
	char p[PATH_MAX];
	for (int i = 0; i < 10; i++) {
		char rel[64];
		snprintf(rel, sizeof(rel), "data/f%d", i);
		write_file(inpath(&S, rel, p), "x", 1);
	}
	int n = 0;
	struct jv_io_hooks h = {cancel_after_two, &n};
	bool removed;
	cr_expect_eq(fsx_remove_tree(&fx, "data", &removed, &h), -ECANCELED);
	struct stat st;
	cr_expect(stat(inpath(&S, "data", p), &st) == 0);
}

Test(fsx, commit_moves_staging_into_place)
{
	struct fsx fx = mkfx(false);
	char stage[FSX_PATH_MAX], p[PATH_MAX];
	cr_assert_eq(fsx_staging_new(&fx, "run-1", stage), 0);
	cr_expect(strncmp(stage, ".jobvisor/staging/run-1/", 24) == 0, "%s", stage);
	char f[FSX_PATH_MAX];
	cr_assert(snprintf(f, sizeof(f), "%s/a.txt", stage) < (int)sizeof(f));
	cr_assert_eq(fsx_write(&fx, f, "A", 1, 0644), 0);
	cr_assert_eq(fsx_commit(&fx, stage, "builds/2", NULL), 0);
	char *d;
	size_t len;
	cr_assert_eq(fsx_read(&fx, "builds/2/a.txt", 10, &d, &len), 0);
	free(d);
	/* A new parent chain is created. */
	cr_assert_eq(fsx_staging_new(&fx, "run-1", stage), 0);
	cr_assert_eq(fsx_commit(&fx, stage, "backups/new/x", NULL), 0);
	struct stat st;
	cr_expect(stat(inpath(&S, "backups/new/x", p), &st) == 0 && S_ISDIR(st.st_mode));
	/* Never over a non-empty directory. */
	cr_assert_eq(fsx_staging_new(&fx, "run-1", stage), 0);
	cr_expect_eq(fsx_commit(&fx, stage, "builds/1", NULL), -ENOTEMPTY);
	cr_expect_eq(fsx_commit(&fx, stage, "rel_out/x", NULL), FSX_EESCAPE);
	cr_expect_eq(fsx_commit(&fx, ".", "x", NULL), FSX_EROOT);
}

Test(fsx, staging_runs_are_listed_and_cleaned)
{
	struct fsx fx = mkfx(false);
	char stage[FSX_PATH_MAX];
	struct fsx_list l;
	cr_assert_eq(fsx_staging_runs(&fx, NULL, &l), 0);
	cr_expect_eq(l.n, 0);
	cr_assert_eq(fsx_staging_new(&fx, "old-run", stage), 0);
	cr_assert_eq(fsx_staging_new(&fx, "this-run", stage), 0);
	cr_expect_eq(fsx_staging_new(&fx, "../evil", stage), -EINVAL);
	cr_assert_eq(fsx_staging_runs(&fx, "this-run", &l), 0);
	cr_assert_eq(l.n, 1);
	cr_expect_str_eq(l.v[0].name, "old-run");
	fsx_list_free(&l);
	cr_assert_eq(fsx_staging_clean(&fx, "old-run"), 0);
	cr_assert_eq(fsx_staging_runs(&fx, "this-run", &l), 0);
	cr_expect_eq(l.n, 0);
	fsx_list_free(&l);
	cr_expect_eq(fsx_staging_clean(&fx, "../.."), -EINVAL);
}

Test(fsx, swap_exchanges_with_and_without_rename_exchange)
{
	for (int fallback = 0; fallback < 2; fallback++) {
		struct fsx fx = mkfx(false);
		fx.no_exchange = fallback;
		cr_assert_eq(fsx_write(&fx, "a.txt", "A", 1, 0644), 0);
		cr_assert_eq(fsx_mkdir(&fx, "bdir", 0755, false), 0);
		cr_assert_eq(fsx_swap(&fx, "a.txt", "bdir"), 0, "fallback=%d", fallback);
		struct stat st;
		cr_assert_eq(fsx_lstat(&fx, "a.txt", &st), 0);
		cr_expect(S_ISDIR(st.st_mode));
		cr_assert_eq(fsx_lstat(&fx, "bdir", &st), 0);
		cr_expect(S_ISREG(st.st_mode));
		cr_expect_eq(fsx_swap(&fx, "a.txt", "missing"), -ENOENT);
		cr_expect_eq(fsx_swap(&fx, "a.txt", "rel_out/secret.txt"), FSX_EESCAPE);
		bool r;
		cr_assert_eq(fsx_remove_tree(&fx, "a.txt", &r, NULL), 0);
		cr_assert_eq(fsx_remove_tree(&fx, "bdir", &r, NULL), 0);
		struct fsx_list l;
		cr_assert_eq(fsx_list(&fx, ".", &l), 0);
		for (size_t i = 0; i < l.n; i++)
			cr_expect(strstr(l.v[i].name, ".swap.") == NULL);
		fsx_list_free(&l);
	}
}

Test(fsx, link_swap_replaces_symlink_atomically)
{
	struct fsx fx = mkfx(false);
	char p[PATH_MAX], t[PATH_MAX];
	cr_assert_eq(fsx_mkdir(&fx, "builds/2", 0755, false), 0);
	cr_assert_eq(fsx_link_swap(&fx, "current", "builds/2"), 0);
	ssize_t n = readlink(inpath(&S, "current", p), t, sizeof(t) - 1);
	cr_assert(n > 0);
	t[n] = '\0';
	cr_expect_str_eq(t, "builds/2");
	cr_assert_eq(fsx_link_swap(&fx, "data/cur", "../builds/1"), 0);
	cr_expect_eq(fsx_link_swap(&fx, "current", "../outside"), FSX_EESCAPE);
	cr_expect_eq(fsx_link_swap(&fx, "current", "/etc"), FSX_EABSOLUTE);
	cr_expect_eq(fsx_link_swap(&fx, "current", "builds/9"), -ENOENT);
	cr_expect_eq(fsx_link_swap(&fx, "current", "rel_out"), FSX_EESCAPE);
	cr_expect_eq(fsx_link_swap(&fx, "rel_out/x", "builds/1"), FSX_EESCAPE);
	/* The link's own directory may not be reached through a symlink. */
	cr_expect_eq(fsx_link_swap(&fx, "current/x", "."), FSX_ESYMLINK);
	cr_expect_neq(fsx_link_swap(&fx, "data", "builds/1"), 0); /* a real directory stays */
	struct stat st;
	cr_expect(lstat(inpath(&S, "data", p), &st) == 0 && S_ISDIR(st.st_mode));
}

Test(fsx, sha256_and_free_space)
{
	struct fsx fx = mkfx(false);
	cr_assert_eq(fsx_write(&fx, "abc", "abc", 3, 0644), 0);
	char hex[JV_SHA256_HEX];
	uint64_t size = 0;
	cr_assert_eq(fsx_sha256(&fx, "abc", hex, &size, NULL), 0);
	cr_expect_str_eq(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
	cr_expect_eq(size, 3);
	cr_expect_eq(fsx_sha256(&fx, "data", hex, &size, NULL), -EISDIR);
	uint64_t avail = 0, total = 0;
	cr_assert_eq(fsx_free_space(&fx, &avail, &total), 0);
	cr_expect(avail > 0 && total >= avail);
}
