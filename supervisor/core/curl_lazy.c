/* curl_lazy.c — libcurl, loaded on first use.
 *
 * libcurl drags some 35 shared libraries in with it (TLS, Kerberos, LDAP,
 * SASL, IDN...). Linked normally they are mapped and relocated at every exec
 * of jobvisor, which is most of the cost of a job run that never touches the
 * network (each run execs the binary twice: `jobvisor run` and its child).
 * Instead jobvisor defines the libcurl functions it uses here, and the first
 * call dlopen()s libcurl.so.4 and forwards to the real ones. Callers see the
 * normal libcurl API; when the library cannot be loaded, constructors return
 * NULL and everything else an error code, which the callers already handle.
 *
 * Variadic setters are forwarded by the option's type class, exactly as
 * libcurl encodes it in the option number (CURLOPTTYPE_*). */
#define CURL_DISABLE_TYPECHECK 1
#include <curl/curl.h>

#include <dlfcn.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>

#define CURL_SONAME "libcurl.so.4"

static struct {
	bool tried;
	void *lib;
	CURLcode (*global_init)(long);
	void (*global_cleanup)(void);
	CURL *(*easy_init)(void);
	void (*easy_cleanup)(CURL *);
	CURLcode (*easy_setopt)(CURL *, CURLoption, ...);
	CURLcode (*easy_getinfo)(CURL *, CURLINFO, ...);
	CURLcode (*easy_perform)(CURL *);
	const char *(*easy_strerror)(CURLcode);
	struct curl_slist *(*slist_append)(struct curl_slist *, const char *);
	void (*slist_free_all)(struct curl_slist *);
	void (*free_)(void *);
	CURLM *(*multi_init)(void);
	CURLMcode (*multi_cleanup)(CURLM *);
	CURLMcode (*multi_add_handle)(CURLM *, CURL *);
	CURLMcode (*multi_remove_handle)(CURLM *, CURL *);
	CURLMcode (*multi_perform)(CURLM *, int *);
	CURLMcode (*multi_poll)(CURLM *, struct curl_waitfd *, unsigned int, int, int *);
	CURLMsg *(*multi_info_read)(CURLM *, int *);
	CURLU *(*url)(void);
	void (*url_cleanup)(CURLU *);
	CURLUcode (*url_set)(CURLU *, CURLUPart, const char *, unsigned int);
	CURLUcode (*url_get)(CURLU *, CURLUPart, char **, unsigned int);
} c;

static bool load(void)
{
	if (c.lib)
		return true;
	if (c.tried)
		return false;
	c.tried = true;
	void *lib = dlopen(CURL_SONAME, RTLD_NOW | RTLD_LOCAL);
	if (!lib)
		return false;
	struct {
		void **slot;
		const char *name;
	} syms[] = {
		{(void **)&c.global_init, "curl_global_init"},
		{(void **)&c.global_cleanup, "curl_global_cleanup"},
		{(void **)&c.easy_init, "curl_easy_init"},
		{(void **)&c.easy_cleanup, "curl_easy_cleanup"},
		{(void **)&c.easy_setopt, "curl_easy_setopt"},
		{(void **)&c.easy_getinfo, "curl_easy_getinfo"},
		{(void **)&c.easy_perform, "curl_easy_perform"},
		{(void **)&c.easy_strerror, "curl_easy_strerror"},
		{(void **)&c.slist_append, "curl_slist_append"},
		{(void **)&c.slist_free_all, "curl_slist_free_all"},
		{(void **)&c.free_, "curl_free"},
		{(void **)&c.multi_init, "curl_multi_init"},
		{(void **)&c.multi_cleanup, "curl_multi_cleanup"},
		{(void **)&c.multi_add_handle, "curl_multi_add_handle"},
		{(void **)&c.multi_remove_handle, "curl_multi_remove_handle"},
		{(void **)&c.multi_perform, "curl_multi_perform"},
		{(void **)&c.multi_poll, "curl_multi_poll"},
		{(void **)&c.multi_info_read, "curl_multi_info_read"},
		{(void **)&c.url, "curl_url"},
		{(void **)&c.url_cleanup, "curl_url_cleanup"},
		{(void **)&c.url_set, "curl_url_set"},
		{(void **)&c.url_get, "curl_url_get"},
	};
	for (size_t i = 0; i < sizeof(syms) / sizeof(syms[0]); i++) {
		*syms[i].slot = dlsym(lib, syms[i].name);
		if (!*syms[i].slot) {
			dlclose(lib);
			return false;
		}
	}
	c.lib = lib;
	return true;
}

CURLcode curl_global_init(long flags)
{
	return load() ? c.global_init(flags) : CURLE_FAILED_INIT;
}

void curl_global_cleanup(void)
{
	if (c.lib)
		c.global_cleanup();
}

CURL *curl_easy_init(void)
{
	return load() ? c.easy_init() : NULL;
}

void curl_easy_cleanup(CURL *h)
{
	if (c.lib && h)
		c.easy_cleanup(h);
}

/* The argument's C type follows from the option number's type class. */
CURLcode curl_easy_setopt(CURL *h, CURLoption opt, ...)
{
	if (!c.lib || !h)
		return CURLE_FAILED_INIT;
	va_list ap;
	va_start(ap, opt);
	CURLcode rc;
	if (opt < CURLOPTTYPE_OBJECTPOINT) {
		long v = va_arg(ap, long);
		rc = c.easy_setopt(h, opt, v);
	} else if (opt < CURLOPTTYPE_FUNCTIONPOINT) {
		void *v = va_arg(ap, void *);
		rc = c.easy_setopt(h, opt, v);
	} else if (opt < CURLOPTTYPE_OFF_T) {
		void (*v)(void) = va_arg(ap, void (*)(void));
		rc = c.easy_setopt(h, opt, v);
	} else if (opt < CURLOPTTYPE_BLOB) {
		curl_off_t v = va_arg(ap, curl_off_t);
		rc = c.easy_setopt(h, opt, v);
	} else {
		void *v = va_arg(ap, void *);
		rc = c.easy_setopt(h, opt, v);
	}
	va_end(ap);
	return rc;
}

/* Every CURLINFO_* argument is a pointer to where the answer goes. */
CURLcode curl_easy_getinfo(CURL *h, CURLINFO info, ...)
{
	if (!c.lib || !h)
		return CURLE_FAILED_INIT;
	va_list ap;
	va_start(ap, info);
	void *out = va_arg(ap, void *);
	va_end(ap);
	return c.easy_getinfo(h, info, out);
}

CURLcode curl_easy_perform(CURL *h)
{
	return c.lib ? c.easy_perform(h) : CURLE_FAILED_INIT;
}

const char *curl_easy_strerror(CURLcode code)
{
	return c.lib ? c.easy_strerror(code) : "libcurl (" CURL_SONAME ") could not be loaded";
}

struct curl_slist *curl_slist_append(struct curl_slist *list, const char *s)
{
	return load() ? c.slist_append(list, s) : NULL;
}

void curl_slist_free_all(struct curl_slist *list)
{
	if (c.lib && list)
		c.slist_free_all(list);
}

void curl_free(void *p)
{
	if (c.lib && p)
		c.free_(p);
}

CURLM *curl_multi_init(void)
{
	return load() ? c.multi_init() : NULL;
}

CURLMcode curl_multi_cleanup(CURLM *m)
{
	return c.lib ? c.multi_cleanup(m) : CURLM_BAD_HANDLE;
}

CURLMcode curl_multi_add_handle(CURLM *m, CURL *h)
{
	return c.lib ? c.multi_add_handle(m, h) : CURLM_BAD_HANDLE;
}

CURLMcode curl_multi_remove_handle(CURLM *m, CURL *h)
{
	return c.lib ? c.multi_remove_handle(m, h) : CURLM_BAD_HANDLE;
}

CURLMcode curl_multi_perform(CURLM *m, int *running)
{
	return c.lib ? c.multi_perform(m, running) : CURLM_BAD_HANDLE;
}

CURLMcode curl_multi_poll(CURLM *m, struct curl_waitfd *fds, unsigned int n, int timeout_ms, int *ret)
{
	return c.lib ? c.multi_poll(m, fds, n, timeout_ms, ret) : CURLM_BAD_HANDLE;
}

CURLMsg *curl_multi_info_read(CURLM *m, int *left)
{
	return c.lib ? c.multi_info_read(m, left) : NULL;
}

CURLU *curl_url(void)
{
	return load() ? c.url() : NULL;
}

void curl_url_cleanup(CURLU *u)
{
	if (c.lib && u)
		c.url_cleanup(u);
}

CURLUcode curl_url_set(CURLU *u, CURLUPart part, const char *content, unsigned int flags)
{
	return c.lib ? c.url_set(u, part, content, flags) : CURLUE_BAD_HANDLE;
}

CURLUcode curl_url_get(CURLU *u, CURLUPart part, char **out, unsigned int flags)
{
	return c.lib ? c.url_get(u, part, out, flags) : CURLUE_BAD_HANDLE;
}
