/* zstd_lazy.c — see zstd_lazy.h. */
#include "zstd_lazy.h"

#include <dlfcn.h>
#include <string.h>

#define ZSTD_SONAME "libzstd.so.1"

const struct jv_zstd *jv_zstd_load(void)
{
	static struct jv_zstd api;
	static bool tried, ok;
	if (tried)
		return ok ? &api : NULL;
	tried = true;
	void *lib = dlopen(ZSTD_SONAME, RTLD_NOW | RTLD_LOCAL);
	if (!lib)
		return NULL;
	*(void **)&api.create = dlsym(lib, "ZSTD_createDStream");
	*(void **)&api.free = dlsym(lib, "ZSTD_freeDStream");
	*(void **)&api.decompress = dlsym(lib, "ZSTD_decompressStream");
	*(void **)&api.is_error = dlsym(lib, "ZSTD_isError");
	*(void **)&api.error_name = dlsym(lib, "ZSTD_getErrorName");
	*(void **)&api.cctx_create = dlsym(lib, "ZSTD_createCCtx");
	*(void **)&api.cctx_free = dlsym(lib, "ZSTD_freeCCtx");
	*(void **)&api.cctx_set = dlsym(lib, "ZSTD_CCtx_setParameter");
	*(void **)&api.compress2 = dlsym(lib, "ZSTD_compressStream2");
	if (!api.cctx_create || !api.cctx_free || !api.cctx_set || !api.compress2)
		api.compress2 = NULL;
	ok = api.create && api.free && api.decompress && api.is_error && api.error_name;
	return ok ? &api : NULL;
}

bool jv_zstd_magic(const void *p, size_t n)
{
	static const unsigned char magic[4] = {0x28, 0xb5, 0x2f, 0xfd};
	return n >= 4 && memcmp(p, magic, 4) == 0;
}
