/* test_arch.c — the archive core (lua/arch_*.c) against real archives built
 * here with libarchive, including hostile ones: '..' and absolute names,
 * symlink tricks, hard links out, devices and FIFOs, zip with '..', bombs,
 * truncation and manifest mismatches. Every test checks that the directory
 * outside the root is unchanged and that a failed extraction left nothing. */
#include <archive.h>
#include <archive_entry.h>
#include <criterion/criterion.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "arch.h"
#include "fsapi_util.h"
#include "fsx.h"

static struct scratch S;
static char *outside_before;

static void setup(void)
{
	scratch_setup(&S);
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

TestSuite(arch, .init = setup, .fini = teardown, .timeout = 120);

/* ---- building archives ------------------------------------------------ */

struct tentry {
	char type;        /* f file, d dir, l symlink, h hardlink, c chardev, p fifo, z zeros */
	const char *path;
	const char *data; /* f: content; l/h: target */
	uint64_t size;    /* z: number of zero bytes */
};

enum { FMT_TAR, FMT_ZIP };

static void build(const char *rel, int fmt, const char *filter, const struct tentry *v, size_t n,
                  bool unset_sizes)
{
	char path[PATH_MAX];
	struct archive *a = archive_write_new();
	if (fmt == FMT_ZIP)
		archive_write_set_format_zip(a);
	else
		archive_write_set_format_pax_restricted(a);
	if (!strcmp(filter, "zstd"))
		archive_write_add_filter_zstd(a);
	else if (!strcmp(filter, "gzip"))
		archive_write_add_filter_gzip(a);
	else if (!strcmp(filter, "xz"))
		archive_write_add_filter_xz(a);
	cr_assert_eq(archive_write_open_filename(a, inpath(&S, rel, path)), ARCHIVE_OK, "%s",
	             archive_error_string(a));
	static char zeros[65536];
	for (size_t i = 0; i < n; i++) {
		struct archive_entry *e = archive_entry_new();
		archive_entry_set_pathname(e, v[i].path);
		archive_entry_set_perm(e, 0644);
		archive_entry_set_mtime(e, 1700000000, 0);
		switch (v[i].type) {
		case 'f':
			archive_entry_set_filetype(e, AE_IFREG);
			archive_entry_set_size(e, (la_int64_t)strlen(v[i].data));
			break;
		case 'z':
			archive_entry_set_filetype(e, AE_IFREG);
			if (unset_sizes)
				archive_entry_unset_size(e);
			else
				archive_entry_set_size(e, (la_int64_t)v[i].size);
			break;
		case 'd':
			archive_entry_set_filetype(e, AE_IFDIR);
			archive_entry_set_perm(e, 0755);
			break;
		case 'l':
			archive_entry_set_filetype(e, AE_IFLNK);
			archive_entry_set_symlink(e, v[i].data);
			break;
		case 'h':
			archive_entry_set_filetype(e, AE_IFREG);
			archive_entry_set_hardlink(e, v[i].data);
			archive_entry_set_size(e, 0);
			break;
		case 'c':
			archive_entry_set_filetype(e, AE_IFCHR);
			archive_entry_set_rdev(e, makedev(1, 3));
			break;
		case 'p':
			archive_entry_set_filetype(e, AE_IFIFO);
			break;
		}
		cr_assert(archive_write_header(a, e) >= ARCHIVE_WARN, "%s", archive_error_string(a));
		if (v[i].type == 'f')
			archive_write_data(a, v[i].data, strlen(v[i].data));
		for (uint64_t left = v[i].type == 'z' ? v[i].size : 0; left > 0;) {
			size_t k = left < sizeof(zeros) ? left : sizeof(zeros);
			archive_write_data(a, zeros, k);
			left -= k;
		}
		archive_entry_free(e);
	}
	cr_assert_eq(archive_write_close(a), ARCHIVE_OK, "%s", archive_error_string(a));
	archive_write_free(a);
}

static uint64_t rng = 88172645463325252ull;
static uint64_t xorshift(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

static void random_file(const char *rel, size_t size, bool half_compressible)
{
	char p[PATH_MAX];
	unsigned char *buf = malloc(size);
	for (size_t i = 0; i < size; i++)
		buf[i] = (half_compressible && (i / 4096) % 2) ? (unsigned char)(i % 7)
		                                               : (unsigned char)xorshift();
	write_file(inpath(&S, rel, p), buf, size);
	free(buf);
}

/* ---- running extraction -------------------------------------------------- */

static int extract(const char *archive, const char *dst, const struct arch_extract_opts *o,
                   char *err, struct arch_extract_result *r)
{
	struct arch_extract_opts def = {0};
	struct arch_extract_result rr;
	return arch_extract(S.root_fd, archive, S.root_fd, dst, o ? o : &def, r ? r : &rr, err, 512);
}

static bool exists_in(const char *rel)
{
	char p[PATH_MAX];
	struct stat st;
	return lstat(inpath(&S, rel, p), &st) == 0;
}

/* Extract must fail with a message containing want, and leave no dst behind. */
static void expect_refused(const char *archive, const char *want)
{
	char err[512] = "";
	int rc = extract(archive, "out", NULL, err, NULL);
	cr_expect(rc < 0, "extracting %s should fail", archive);
	cr_expect(strstr(err, want) != NULL, "message '%s' should mention '%s'", err, want);
	cr_expect(!exists_in("out"), "a failed extraction left its directory behind");
}

/* ---- hostile archives -------------------------------------------------- */

Test(arch, refuses_dotdot_entries)
{
	struct tentry v[] = {{'f', "ok.txt", "fine", 0}, {'f', "../outside/evil.txt", "x", 0}};
	build("a.tar", FMT_TAR, "none", v, 2, false);
	expect_refused("a.tar", "'..'");
}

Test(arch, refuses_absolute_entries)
{
	char abs[PATH_MAX];
	outpath(&S, "abs.txt", abs);
	struct tentry v[] = {{'f', abs, "x", 0}};
	build("a.tar.gz", FMT_TAR, "gzip", v, 1, false);
	expect_refused("a.tar.gz", "absolute");
}

Test(arch, refuses_writing_through_a_symlink_entry)
{
	struct tentry v[] = {{'d', "sub", NULL, 0}, {'l', "link", "sub", 0}, {'f', "link/f.txt", "x", 0}};
	build("a.tar.xz", FMT_TAR, "xz", v, 3, false);
	expect_refused("a.tar.xz", "passes through a symlink");
}

Test(arch, refuses_symlinks_pointing_outside)
{
	struct tentry v[] = {{'l', "evil", S.outside, 0}, {'f', "evil/pwned.txt", "x", 0}};
	build("a.tar.zst", FMT_TAR, "zstd", v, 2, false);
	expect_refused("a.tar.zst", "points outside");
	struct tentry w[] = {{'d', "d", NULL, 0}, {'l', "d/up", "../../outside", 0}};
	build("b.tar.zst", FMT_TAR, "zstd", w, 2, false);
	expect_refused("b.tar.zst", "points outside");
}

Test(arch, refuses_replacing_a_symlink_with_a_file)
{
	struct tentry v[] = {{'f', "t", "target", 0}, {'l', "l", "t", 0}, {'f', "l", "overwrite", 0}};
	build("a.tar", FMT_TAR, "none", v, 3, false);
	expect_refused("a.tar", "collides");
}

Test(arch, refuses_hard_links_leaving_the_destination)
{
	char abs[PATH_MAX];
	struct tentry v[] = {{'h', "h1", "../outside/secret.txt", 0}};
	build("a.tar", FMT_TAR, "none", v, 1, false);
	expect_refused("a.tar", "'..'");
	struct tentry w[] = {{'h', "h2", outpath(&S, "secret.txt", abs), 0}};
	build("b.tar", FMT_TAR, "none", w, 1, false);
	expect_refused("b.tar", "absolute");
	/* To something that is not a regular file extracted before it. */
	struct tentry x[] = {{'d', "d", NULL, 0}, {'h', "h3", "d", 0}};
	build("c.tar", FMT_TAR, "none", x, 2, false);
	expect_refused("c.tar", "hard link");
}

Test(arch, allows_hard_links_inside)
{
	struct tentry v[] = {{'f', "a.txt", "shared", 0}, {'h', "b.txt", "a.txt", 0}};
	build("a.tar", FMT_TAR, "none", v, 2, false);
	char err[512];
	struct arch_extract_result r;
	cr_assert_eq(extract("a.tar", "out", NULL, err, &r), 0, "%s", err);
	cr_expect_eq(r.hardlinks, 1);
	char p[PATH_MAX];
	char *d = slurp(inpath(&S, "out/b.txt", p), NULL);
	cr_expect_str_eq(d, "shared");
	free(d);
}

Test(arch, refuses_devices_and_fifos)
{
	struct tentry v[] = {{'c', "null", NULL, 0}};
	build("a.tar", FMT_TAR, "none", v, 1, false);
	expect_refused("a.tar", "character device");
	struct tentry w[] = {{'p', "pipe", NULL, 0}};
	build("b.tar", FMT_TAR, "none", w, 1, false);
	expect_refused("b.tar", "FIFO");
}

Test(arch, refuses_zip_with_dotdot_names)
{
	struct tentry v[] = {{'f', "mod/ok.txt", "fine", 0}, {'f', "../../outside/zipslip.txt", "x", 0}};
	build("a.zip", FMT_ZIP, "none", v, 2, false);
	expect_refused("a.zip", "'..'");
}

Test(arch, stops_a_zstd_bomb_at_the_size_cap)
{
	struct tentry v[] = {{'z', "bomb.bin", NULL, 64u << 20}};
	build("bomb.tar.zst", FMT_TAR, "zstd", v, 1, false);
	char p[PATH_MAX];
	struct stat st;
	cr_assert(stat(inpath(&S, "bomb.tar.zst", p), &st) == 0);
	cr_expect(st.st_size < (1 << 20), "a bomb should be small compressed");
	struct arch_extract_opts o = {.max_bytes = 8u << 20};
	char err[512];
	cr_expect(extract("bomb.tar.zst", "out", &o, err, NULL) < 0);
	cr_expect(strstr(err, "size cap") != NULL, "%s", err);
	cr_expect(!exists_in("out"));
}

Test(arch, stops_a_zip_bomb_without_declared_sizes_while_streaming)
{
	struct tentry v[] = {{'z', "bomb.bin", NULL, 32u << 20}};
	build("bomb.zip", FMT_ZIP, "none", v, 1, true);
	struct arch_extract_opts o = {.max_bytes = 4u << 20};
	char err[512];
	cr_expect(extract("bomb.zip", "out", &o, err, NULL) < 0);
	cr_expect(strstr(err, "size cap") != NULL, "%s", err);
	cr_expect(!exists_in("out"));
}

Test(arch, ratio_guard_stops_a_bomb_beyond_the_floor_and_spares_small_archives)
{
	/* 96 MiB of zeros: a few KiB compressed, beyond the 64 MiB floor of the guard. */
	struct tentry v[] = {{'z', "bomb.bin", NULL, 96u << 20}};
	build("bomb.tar.zst", FMT_TAR, "zstd", v, 1, false);
	struct arch_extract_opts o = {.max_ratio = 20};
	char err[512];
	cr_expect(extract("bomb.tar.zst", "out", &o, err, NULL) < 0);
	cr_expect(strstr(err, "beyond 20 times its own size") != NULL, "%s", err);
	cr_expect(strstr(err, "limit 64.0 MiB") != NULL, "%s", err);
	cr_expect(!exists_in("out"));
	/* 32 MiB of zeros: as compressible, but under the floor: extracted. */
	struct tentry w[] = {{'z', "fine.bin", NULL, 32u << 20}};
	build("fine.tar.zst", FMT_TAR, "zstd", w, 1, false);
	cr_expect(extract("fine.tar.zst", "out2", &o, err, NULL) == 0, "%s", err);
}

Test(arch, free_space_guard_refuses_what_would_fill_the_disk)
{
	struct tentry v[] = {{'z', "big.bin", NULL, 64u << 20}};
	build("big.tar.zst", FMT_TAR, "zstd", v, 1, false);
	struct statvfs sv;
	cr_assert(fstatvfs(S.root_fd, &sv) == 0);
	uint64_t avail = (uint64_t)sv.f_bavail * sv.f_frsize;
	/* Pretend only ~4 MiB may be used. */
	struct arch_extract_opts o = {.reserve_bytes = avail - (4u << 20)};
	char err[512];
	cr_expect(extract("big.tar.zst", "out", &o, err, NULL) < 0);
	cr_expect(strstr(err, "not enough free space") != NULL, "%s", err);
	cr_expect(!exists_in("out"));
}

Test(arch, truncated_archive_fails_cleanly)
{
	cr_assert_eq(mkdir(inpath(&S, "src", (char[PATH_MAX]){0}), 0755), 0);
	random_file("src/a.bin", 2u << 20, false);
	random_file("src/b.bin", 2u << 20, false);
	int src = open(inpath(&S, "src", (char[PATH_MAX]){0}), O_RDONLY | O_DIRECTORY);
	struct arch_create_opts co = {0};
	struct arch_create_result cr;
	char err[512];
	cr_assert_eq(arch_create(src, S.root_fd, "t.tar.zst", &co, &cr, err, sizeof(err)), 0, "%s", err);
	close(src);
	char p[PATH_MAX];
	struct stat st;
	cr_assert(stat(inpath(&S, "t.tar.zst", p), &st) == 0);
	cr_assert(truncate(p, st.st_size / 2) == 0);
	struct arch_extract_opts o = {.manifest = &cr.manifest};
	cr_expect(extract("t.tar.zst", "out", &o, err, NULL) < 0);
	cr_expect(strstr(err, "truncated") != NULL, "%s", err);
	cr_expect(!exists_in("out"));
	cr_expect(arch_verify(S.root_fd, "t.tar.zst", &cr.manifest, NULL, err, sizeof(err)) < 0);
	cr_expect(strstr(err, "truncated") != NULL, "%s", err);
	arch_create_result_free(&cr);
}

/* ---- create / verify / extract round trip -------------------------------- */

static void make_world(void)
{
	char p[PATH_MAX];
	cr_assert(mkdir(inpath(&S, "data", p), 0755) == 0);
	cr_assert(mkdir(inpath(&S, "data/world", p), 0755) == 0);
	cr_assert(mkdir(inpath(&S, "data/world/region", p), 0700) == 0);
	cr_assert(mkdir(inpath(&S, "data/logs", p), 0755) == 0);
	cr_assert(mkdir(inpath(&S, "data/.jobvisor", p), 0755) == 0);
	random_file("data/world/region/r.0.0.mca", 3u << 20, true);
	random_file("data/world/region/r.0.1.mca", 1u << 20, false);
	for (int i = 0; i < 50; i++) {
		char rel[64];
		snprintf(rel, sizeof(rel), "data/world/player%02d.dat", i);
		random_file(rel, 100 + (size_t)i * 37, false);
	}
	write_file(inpath(&S, "data/empty.txt", p), "", 0);
	write_file(inpath(&S, "data/logs/latest.log", p), "log\n", 4);
	write_file(inpath(&S, "data/.jobvisor/state.json", p), "{}", 2);
	cr_assert(chmod(inpath(&S, "data/world/player00.dat", p), 0600) == 0);
	cr_assert(symlink("world/region", inpath(&S, "data/regions", p)) == 0);
	cr_assert(symlink("../../outside", inpath(&S, "data/escape", p)) == 0);
	cr_assert(symlink(S.outside, inpath(&S, "data/escape_abs", p)) == 0);
	cr_assert(mkfifo(inpath(&S, "data/fifo", p), 0644) == 0);
}

Test(arch, create_writes_manifest_and_skips_what_it_must)
{
	make_world();
	int src = open(inpath(&S, "data", (char[PATH_MAX]){0}), O_RDONLY | O_DIRECTORY);
	const char *ex[] = {"logs"};
	struct arch_create_opts co = {.exclude = ex, .nexclude = 1};
	struct arch_create_result r;
	char err[512];
	/* The output lives inside the tree it archives. */
	cr_assert_eq(arch_create(src, src, "backup.tar.zst", &co, &r, err, sizeof(err)), 0, "%s", err);
	close(src);
	struct fsx fx;
	fsx_init(&fx, S.root_fd);
	char hex[JV_SHA256_HEX];
	uint64_t size;
	cr_assert_eq(fsx_sha256(&fx, "data/backup.tar.zst", hex, &size, NULL), 0);
	cr_expect_str_eq(r.manifest.sha256, hex);
	cr_expect_eq(r.manifest.bytes, size);
	cr_expect_eq(r.files, 53, "files=%llu", (unsigned long long)r.files);
	cr_expect_eq(r.nskipped, 3, "escape, escape_abs, fifo");
	bool saw_link = false;
	for (size_t i = 0; i < r.manifest.n; i++) {
		const struct arch_entry *e = &r.manifest.v[i];
		cr_expect(strncmp(e->path, "logs", 4) != 0, "excluded %s archived", e->path);
		cr_expect(strstr(e->path, "backup.tar.zst") == NULL, "archived its own output");
		cr_expect(strstr(e->path, ".jobvisor") == NULL);
		cr_expect(strstr(e->path, "escape") == NULL && strcmp(e->path, "fifo") != 0);
		if (!strcmp(e->path, "regions")) {
			saw_link = e->type == ARCH_SYMLINK && !strcmp(e->target, "world/region");
		}
		if (!strcmp(e->path, "world/region/r.0.0.mca")) {
			char h2[JV_SHA256_HEX];
			cr_assert_eq(fsx_sha256(&fx, "data/world/region/r.0.0.mca", h2, NULL, NULL), 0);
			cr_expect_str_eq(e->sha256, h2);
			cr_expect_eq(e->size, 3u << 20);
		}
		if (!strcmp(e->path, "world/player00.dat"))
			cr_expect_eq(e->mode, 0600);
	}
	cr_expect(saw_link);
	/* No temp file remains. */
	struct fsx_list l;
	cr_assert_eq(fsx_list(&fx, "data", &l), 0);
	for (size_t i = 0; i < l.n; i++)
		cr_expect(strstr(l.v[i].name, ".tmp.") == NULL);
	fsx_list_free(&l);
	/* Standard tools read it (no padding after the zstd frame). */
	char cmd[PATH_MAX + 64], p[PATH_MAX];
	snprintf(cmd, sizeof(cmd), "zstd -qdc '%s' | tar -tf - >/dev/null",
	         inpath(&S, "data/backup.tar.zst", p));
	pid_t pid = fork();
	if (pid == 0) {
		execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
		_exit(127);
	}
	int status = -1;
	waitpid(pid, &status, 0);
	cr_expect(WIFEXITED(status) && WEXITSTATUS(status) == 0, "zstd | tar rejected the archive");
	/* JSON round trip. */
	cJSON *j = arch_manifest_to_json(&r.manifest);
	struct arch_manifest m2;
	cr_assert_eq(arch_manifest_from_json(j, &m2, err, sizeof(err)), 0, "%s", err);
	cr_expect_eq(m2.n, r.manifest.n);
	cr_expect_str_eq(m2.sha256, r.manifest.sha256);
	cr_assert_eq(arch_verify(S.root_fd, "data/backup.tar.zst", &m2, NULL, err, sizeof(err)), 0,
	             "%s", err);
	arch_manifest_free(&m2);
	cJSON_Delete(j);
	arch_create_result_free(&r);
}

static void create_backup(struct arch_create_result *r)
{
	make_world();
	int src = open(inpath(&S, "data", (char[PATH_MAX]){0}), O_RDONLY | O_DIRECTORY);
	struct arch_create_opts co = {.level = 1, .threads = 2};
	char err[512];
	cr_assert_eq(arch_create(src, S.root_fd, "b.tar.zst", &co, r, err, sizeof(err)), 0, "%s", err);
	close(src);
}

Test(arch, extract_with_manifest_reproduces_the_tree)
{
	struct arch_create_result r;
	create_backup(&r);
	struct arch_extract_opts o = {.manifest = &r.manifest};
	struct arch_extract_result er;
	char err[512];
	cr_assert_eq(extract("b.tar.zst", "restored", &o, err, &er), 0, "%s", err);
	cr_expect_eq(er.files, r.files);
	char p[PATH_MAX], q[PATH_MAX];
	size_t l1 = 0, l2 = 0;
	char *a = slurp(inpath(&S, "data/world/region/r.0.0.mca", p), &l1);
	char *b = slurp(inpath(&S, "restored/world/region/r.0.0.mca", q), &l2);
	cr_expect(l1 == l2 && memcmp(a, b, l1) == 0);
	free(a);
	free(b);
	char t[PATH_MAX];
	ssize_t n = readlink(inpath(&S, "restored/regions", p), t, sizeof(t) - 1);
	cr_assert(n > 0);
	t[n] = '\0';
	cr_expect_str_eq(t, "world/region");
	struct stat st;
	cr_expect(stat(inpath(&S, "restored/world/player00.dat", p), &st) == 0 &&
	          (st.st_mode & 0777) == 0600);
	/* A second extract into the same place is refused. */
	cr_expect(extract("b.tar.zst", "restored", &o, err, NULL) < 0);
	cr_expect(strstr(err, "already exists") != NULL, "%s", err);
	arch_create_result_free(&r);
}

/* dir/f00.bin ... with n random files (every other one half compressible) of
 * size(i) bytes; returns dir opened. */
static int random_tree(const char *dir, int n, size_t (*size)(int))
{
	char p[PATH_MAX];
	cr_assert(mkdir(inpath(&S, dir, p), 0755) == 0);
	for (int i = 0; i < n; i++) {
		char rel[64];
		snprintf(rel, sizeof(rel), "%s/f%02d.bin", dir, i);
		random_file(rel, size(i), i % 2);
	}
	int fd = open(inpath(&S, dir, p), O_RDONLY | O_DIRECTORY);
	cr_assert(fd >= 0);
	return fd;
}

static size_t big_size(int i)
{
	return (4u << 20) + (size_t)i * 4099;
}

/* Every fourth file spans blocks; the others are packed with their neighbours. */
static size_t mixed_size(int i)
{
	return i % 4 == 0 ? (2u << 20) + (size_t)i * 511 : 100 + (size_t)i * 997;
}

Test(arch, big_poorly_compressible_files_round_trip)
{
	/* Regression: blocks shared with the hashing worker while libarchive
	 * compresses them must not be reused by the output sink meanwhile. */
	int src = random_tree("big", 12, big_size);
	struct arch_create_opts co = {.threads = 2};
	struct arch_create_result r;
	char err[512];
	cr_assert_eq(arch_create(src, S.root_fd, "big.tar.zst", &co, &r, err, sizeof(err)), 0, "%s",
	             err);
	close(src);
	cr_expect_eq(arch_verify(S.root_fd, "big.tar.zst", &r.manifest, NULL, err, sizeof(err)), 0,
	             "%s", err);
	struct arch_extract_opts o = {.manifest = &r.manifest};
	cr_expect_eq(extract("big.tar.zst", "out", &o, err, NULL), 0, "%s", err);
	arch_create_result_free(&r);
}

Test(arch, every_files_digest_is_its_own_with_several_hash_workers)
{
	/* Files are hashed by as many workers as zstd workers, in turn: small
	 * ones packed together, big ones block by block. Each manifest digest
	 * must still be the SHA-256 of that file and no other. */
	int src = random_tree("mix", 40, mixed_size);
	struct arch_create_opts co = {.level = 1, .threads = 5};
	struct arch_create_result r;
	char err[512];
	cr_assert_eq(arch_create(src, S.root_fd, "mix.tar.zst", &co, &r, err, sizeof(err)), 0, "%s",
	             err);
	close(src);
	struct fsx fx;
	fsx_init(&fx, S.root_fd);
	size_t files = 0;
	for (size_t i = 0; i < r.manifest.n; i++) {
		const struct arch_entry *e = &r.manifest.v[i];
		if (e->type != ARCH_FILE)
			continue;
		char rel[FSX_PATH_MAX + 8], hex[JV_SHA256_HEX];
		snprintf(rel, sizeof(rel), "mix/%s", e->path);
		cr_assert_eq(fsx_sha256(&fx, rel, hex, NULL, NULL), 0);
		cr_expect_str_eq(e->sha256, hex, "%s", e->path);
		files++;
	}
	cr_expect_eq(files, 40);
	char hex[JV_SHA256_HEX];
	cr_assert_eq(fsx_sha256(&fx, "mix.tar.zst", hex, NULL, NULL), 0);
	cr_expect_str_eq(r.manifest.sha256, hex);
	cr_expect_eq(arch_verify(S.root_fd, "mix.tar.zst", &r.manifest, NULL, err, sizeof(err)), 0,
	             "%s", err);
	arch_create_result_free(&r);
}

Test(arch, manifest_mismatch_fails_extract_and_verify_naming_the_entry)
{
	struct arch_create_result r;
	create_backup(&r);
	char err[512];
	struct arch_entry *e = arch_manifest_find(&r.manifest, "world/player07.dat");
	cr_assert(e);
	char saved = e->sha256[0];
	e->sha256[0] = saved == '0' ? '1' : '0';
	struct arch_extract_opts o = {.manifest = &r.manifest};
	cr_expect(extract("b.tar.zst", "out", &o, err, NULL) < 0);
	cr_expect(strstr(err, "world/player07.dat") != NULL, "%s", err);
	cr_expect(!exists_in("out"));
	cr_expect(arch_verify(S.root_fd, "b.tar.zst", &r.manifest, NULL, err, sizeof(err)) < 0);
	cr_expect(strstr(err, "world/player07.dat") != NULL, "%s", err);
	e->sha256[0] = saved;
	/* Size mismatch. */
	e->size++;
	cr_expect(arch_verify(S.root_fd, "b.tar.zst", &r.manifest, NULL, err, sizeof(err)) < 0);
	cr_expect(strstr(err, "bytes but the manifest says") != NULL, "%s", err);
	e->size--;
	/* Archive digest mismatch. */
	char s0 = r.manifest.sha256[5];
	r.manifest.sha256[5] = s0 == 'a' ? 'b' : 'a';
	cr_expect(arch_verify(S.root_fd, "b.tar.zst", &r.manifest, NULL, err, sizeof(err)) < 0);
	cr_expect(strstr(err, "has sha256") != NULL, "%s", err);
	r.manifest.sha256[5] = s0;
	cr_assert_eq(arch_verify(S.root_fd, "b.tar.zst", &r.manifest, NULL, err, sizeof(err)), 0,
	             "%s", err);
	arch_create_result_free(&r);
}

Test(arch, manifest_missing_and_extra_entries_fail)
{
	struct arch_create_result r;
	create_backup(&r);
	char err[512];
	/* Extra entry in the archive: drop one from the manifest. */
	cJSON *j = arch_manifest_to_json(&r.manifest);
	cJSON *files = cJSON_GetObjectItem(j, "files");
	cJSON *dropped = cJSON_DetachItemFromArray(files, 3);
	struct arch_manifest m;
	cr_assert_eq(arch_manifest_from_json(j, &m, err, sizeof(err)), 0, "%s", err);
	cr_expect(arch_verify(S.root_fd, "b.tar.zst", &m, NULL, err, sizeof(err)) < 0);
	cr_expect(strstr(err, "is not in the manifest") != NULL, "%s", err);
	struct arch_extract_opts o = {.manifest = &m};
	cr_expect(extract("b.tar.zst", "out", &o, err, NULL) < 0);
	cr_expect(strstr(err, "is not in the manifest") != NULL, "%s", err);
	cr_expect(!exists_in("out"));
	arch_manifest_free(&m);
	/* Missing entry: the manifest lists one more file. */
	cJSON_AddItemToArray(files, dropped);
	cJSON *ghost = cJSON_CreateObject();
	cJSON_AddStringToObject(ghost, "path", "world/ghost.dat");
	cJSON_AddStringToObject(ghost, "type", "file");
	cJSON_AddNumberToObject(ghost, "size", 1);
	cJSON_AddStringToObject(ghost, "sha256", r.manifest.sha256);
	cJSON_AddItemToArray(files, ghost);
	cr_assert_eq(arch_manifest_from_json(j, &m, err, sizeof(err)), 0, "%s", err);
	cr_expect(arch_verify(S.root_fd, "b.tar.zst", &m, NULL, err, sizeof(err)) < 0);
	cr_expect(strstr(err, "world/ghost.dat") != NULL && strstr(err, "missing"), "%s", err);
	arch_manifest_free(&m);
	cJSON_Delete(j);
	arch_create_result_free(&r);
}

Test(arch, manifest_parsing_is_strict)
{
	const char *bad[] = {
	    "{\"format\":2,\"files\":[]}",
	    "{\"format\":1}",
	    "{\"format\":1,\"files\":[{\"path\":\"../x\",\"type\":\"file\",\"size\":1,"
	    "\"sha256\":\"" "0000000000000000000000000000000000000000000000000000000000000000\"}]}",
	    "{\"format\":1,\"files\":[{\"path\":\"x\",\"type\":\"file\",\"size\":1,\"sha256\":\"zz\"}]}",
	    "{\"format\":1,\"files\":[{\"path\":\"x\",\"type\":\"fifo\"}]}",
	    "{\"format\":1,\"files\":[{\"path\":\"x\",\"type\":\"dir\"},{\"path\":\"x\",\"type\":\"dir\"}]}",
	    "{\"format\":1,\"files\":[{\"path\":\"l\",\"type\":\"symlink\"}]}",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		cJSON *j = cJSON_Parse(bad[i]);
		cr_assert(j, "test JSON %zu", i);
		struct arch_manifest m;
		char err[512] = "";
		cr_expect(arch_manifest_from_json(j, &m, err, sizeof(err)) < 0, "accepted %s", bad[i]);
		cr_expect(err[0] != '\0');
		cJSON_Delete(j);
	}
}

Test(arch, formats_and_strip_components)
{
	struct tentry v[] = {{'d', "server-1.2", NULL, 0},
	                     {'f', "server-1.2/run.sh", "#!/bin/sh\n", 0},
	                     {'d', "server-1.2/lib", NULL, 0},
	                     {'f', "server-1.2/lib/a.so", "elf", 0}};
	const char *names[] = {"s.tar", "s.tar.gz", "s.tar.xz", "s.tar.zst", "s.zip"};
	const char *filters[] = {"none", "gzip", "xz", "zstd", "none"};
	for (int i = 0; i < 5; i++) {
		build(names[i], i == 4 ? FMT_ZIP : FMT_TAR, filters[i], v, 4, false);
		struct arch_extract_opts o = {.strip = 1};
		char err[512], dst[32];
		snprintf(dst, sizeof(dst), "x%d", i);
		cr_assert_eq(extract(names[i], dst, &o, err, NULL), 0, "%s: %s", names[i], err);
		char rel[64], p[PATH_MAX];
		snprintf(rel, sizeof(rel), "%s/lib/a.so", dst);
		char *d = slurp(inpath(&S, rel, p), NULL);
		cr_expect(d && !strcmp(d, "elf"), "%s", names[i]);
		free(d);
		struct arch_manifest l;
		cr_assert_eq(arch_list(S.root_fd, names[i], &l, NULL, err, sizeof(err)), 0, "%s", err);
		cr_expect_eq(l.n, 4);
		arch_manifest_free(&l);
	}
	char err[512];
	write_file(inpath(&S, "junk.tar", (char[PATH_MAX]){0}), "this is not an archive at all", 29);
	cr_expect(extract("junk.tar", "j", NULL, err, NULL) < 0);
	cr_expect(!exists_in("j"));
}

static bool cancel_after(void *arg, uint64_t done, uint64_t total)
{
	int *n = arg;
	return --*n < 0;
}

Test(arch, cancel_removes_partial_output)
{
	make_world();
	int src = open(inpath(&S, "data", (char[PATH_MAX]){0}), O_RDONLY | O_DIRECTORY);
	int budget = 5;
	struct jv_io_hooks h = {cancel_after, &budget};
	struct arch_create_opts co = {.hooks = &h};
	struct arch_create_result r;
	char err[512];
	cr_expect_eq(arch_create(src, S.root_fd, "c.tar.zst", &co, &r, err, sizeof(err)), -ECANCELED);
	arch_create_result_free(&r);
	struct fsx fx;
	fsx_init(&fx, S.root_fd);
	struct fsx_list l;
	cr_assert_eq(fsx_list(&fx, ".", &l), 0);
	for (size_t i = 0; i < l.n; i++)
		cr_expect(strstr(l.v[i].name, "c.tar.zst") == NULL, "left %s", l.v[i].name);
	fsx_list_free(&l);
	budget = 1000;
	cr_assert_eq(arch_create(src, S.root_fd, "c.tar.zst", &(struct arch_create_opts){0}, &r, err,
	                         sizeof(err)),
	             0, "%s", err);
	close(src);
	arch_create_result_free(&r);
	budget = 3;
	struct arch_extract_opts o = {.hooks = &h};
	int xrc = extract("c.tar.zst", "out", &o, err, NULL);
	cr_expect_eq(xrc, -ECANCELED, "rc=%d budget=%d %s", xrc, budget, err);
	cr_expect(!exists_in("out"));
}

Test(arch, exclude_patterns)
{
	const char *p[] = {"*.log", "world/session.lock", "cache/"};
	cr_expect(arch_excluded("logs/latest.log", p, 3));
	cr_expect(arch_excluded("a.log", p, 3));
	cr_expect(arch_excluded("world/session.lock", p, 3));
	cr_expect(!arch_excluded("other/world/session.lock", p, 3));
	cr_expect(arch_excluded("cache", p, 3));
	cr_expect(!arch_excluded("world/region/r.0.0.mca", p, 3));
}
