/* sanitize.c — scrub error messages and tracebacks before they leave the host:
 * credentials in URLs, secret-looking query values, and absolute paths outside
 * the data dir (the control plane has no business knowing the host's layout). */
#include "scriptdef.h"

#include <stdbool.h>
#include <string.h>
#include <strings.h>

static const char *const secret_keys[] = {"token", "access_token", "password", "passwd",
                                          "secret", "key", "apikey", "api_key",
                                          "signature", "sig", "auth"};

struct out {
	char *p;
	size_t room;
};

static void emit(struct out *o, const char *s, size_t n)
{
	if (n > o->room)
		n = o->room;
	memcpy(o->p, s, n);
	o->p += n;
	o->room -= n;
}

static bool path_char(char c)
{
	return c && c != ' ' && c != '\t' && c != '\n' && c != '\'' && c != '"' && c != ':' &&
	       c != ',' && c != ')' && c != '(' && c != ']' && c != '[';
}

static bool delim_before(const char *in, const char *p)
{
	if (p == in)
		return true;
	char c = p[-1];
	return c == ' ' || c == '\t' || c == '\n' || c == '\'' || c == '"' || c == '(' || c == '=' ||
	       c == '[';
}

void jv_sanitize(char *out, size_t outlen, const char *in, const char *data_dir)
{
	if (outlen == 0)
		return;
	struct out o = {out, outlen - 1};
	size_t ddlen = data_dir ? strlen(data_dir) : 0;
	const char *p = in;
	while (*p && o.room > 0) {
		/* credentials in "scheme://user:pass@host" become "***" */
		if (p[0] == ':' && p[1] == '/' && p[2] == '/') {
			const char *h = p + 3, *at = NULL;
			for (const char *q = h; *q && *q != '/' && *q != ' ' && *q != '\n' && *q != '"' &&
			                        *q != '\'';
			     q++)
				if (*q == '@')
					at = q;
			emit(&o, "://", 3);
			if (at) {
				emit(&o, "***", 3);
				p = at;
			} else {
				p = h;
			}
			continue;
		}
		/* "?token=value" and "&password=value" */
		if (*p == '?' || *p == '&') {
			bool hit = false;
			for (size_t i = 0; i < sizeof(secret_keys) / sizeof(secret_keys[0]) && !hit; i++) {
				size_t kl = strlen(secret_keys[i]);
				if (strncasecmp(p + 1, secret_keys[i], kl) == 0 && p[1 + kl] == '=') {
					emit(&o, p, 2 + kl);
					emit(&o, "***", 3);
					p += 2 + kl;
					while (*p && *p != '&' && *p != ' ' && *p != '\n' && *p != '"' && *p != '\'')
						p++;
					hit = true;
				}
			}
			if (hit)
				continue;
		}
		/* Absolute paths outside the data dir -> .../basename */
		if (*p == '/' && p[1] != '/' && delim_before(in, p)) {
			const char *e = p;
			while (path_char(*e))
				e++;
			size_t n = (size_t)(e - p);
			bool inside = ddlen > 0 && n >= ddlen && strncmp(p, data_dir, ddlen) == 0 &&
			              (n == ddlen || p[ddlen] == '/');
			if (inside || n <= 1) {
				emit(&o, p, n);
			} else {
				const char *base = p + n;
				while (base > p && base[-1] != '/')
					base--;
				emit(&o, ".../", 4);
				emit(&o, base, (size_t)(e - base));
			}
			p = e;
			continue;
		}
		emit(&o, p, 1);
		p++;
	}
	*o.p = '\0';
}
