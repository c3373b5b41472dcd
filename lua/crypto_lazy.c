/* crypto_lazy.c — libcrypto (SHA-256 through EVP), loaded on first use.
 *
 * libcrypto is the biggest library jobvisor maps (about 5 MB of code and a
 * few thousand relocations): linked directly, the dynamic loader spent half of
 * every job run's start-up relocating it, also for the many job runs that
 * never hash anything. Like libcurl (supervisor/core/curl_lazy.c) and
 * libarchive (archive_lazy.c), it is now opened on the first digest: this
 * file defines the few EVP functions the fs, archive, download and S3 cores use
 * and forwards each to the real one.
 *
 * Threads: hashq workers call these from their own threads, so the library
 * and every symbol are resolved once, under pthread_once. If libcrypto cannot
 * be loaded, EVP_MD_CTX_new returns NULL and the callers report it as they
 * report an allocation failure (-ENOMEM, "out of memory"). */
#include <openssl/evp.h>

#include <dlfcn.h>
#include <pthread.h>
#include <stddef.h>

#define CRYPTO_SONAME "libcrypto.so.3"

static struct {
	EVP_MD_CTX *(*ctx_new)(void);
	void (*ctx_free)(EVP_MD_CTX *);
	const EVP_MD *(*sha256)(void);
	const EVP_MD *(*md5)(void); /* S3's Content-MD5 (lua/s3.c) */
	int (*init)(EVP_MD_CTX *, const EVP_MD *, ENGINE *);
	int (*update)(EVP_MD_CTX *, const void *, size_t);
	int (*final)(EVP_MD_CTX *, unsigned char *, unsigned int *);
} fn;

static pthread_once_t once = PTHREAD_ONCE_INIT;

static void load(void)
{
	void *lib = dlopen(CRYPTO_SONAME, RTLD_NOW | RTLD_LOCAL);
	if (!lib)
		return;
	*(void **)&fn.ctx_free = dlsym(lib, "EVP_MD_CTX_free");
	*(void **)&fn.sha256 = dlsym(lib, "EVP_sha256");
	*(void **)&fn.md5 = dlsym(lib, "EVP_md5");
	*(void **)&fn.init = dlsym(lib, "EVP_DigestInit_ex");
	*(void **)&fn.update = dlsym(lib, "EVP_DigestUpdate");
	*(void **)&fn.final = dlsym(lib, "EVP_DigestFinal_ex");
	/* Last, and only when everything else is there: the gate the others rely on. */
	if (fn.ctx_free && fn.sha256 && fn.md5 && fn.init && fn.update && fn.final)
		*(void **)&fn.ctx_new = dlsym(lib, "EVP_MD_CTX_new");
}

EVP_MD_CTX *EVP_MD_CTX_new(void)
{
	pthread_once(&once, load);
	return fn.ctx_new ? fn.ctx_new() : NULL;
}

/* The others are only reached with a context from EVP_MD_CTX_new (or NULL). */
void EVP_MD_CTX_free(EVP_MD_CTX *ctx)
{
	if (ctx && fn.ctx_free)
		fn.ctx_free(ctx);
}

const EVP_MD *EVP_sha256(void)
{
	pthread_once(&once, load);
	return fn.sha256 ? fn.sha256() : NULL;
}

const EVP_MD *EVP_md5(void)
{
	pthread_once(&once, load);
	return fn.md5 ? fn.md5() : NULL;
}

int EVP_DigestInit_ex(EVP_MD_CTX *ctx, const EVP_MD *type, ENGINE *impl)
{
	return ctx && type && fn.init ? fn.init(ctx, type, impl) : 0;
}

int EVP_DigestUpdate(EVP_MD_CTX *ctx, const void *d, size_t cnt)
{
	return ctx && fn.update ? fn.update(ctx, d, cnt) : 0;
}

int EVP_DigestFinal_ex(EVP_MD_CTX *ctx, unsigned char *md, unsigned int *s)
{
	return ctx && fn.final ? fn.final(ctx, md, s) : 0;
}
