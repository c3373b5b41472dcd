/* ident.c — identifier validation, checked before any file is touched. */
#include "jobvisor/ident.h"

#include <string.h>

static bool is_alnum(char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

bool jv_ident_valid(const char *s)
{
	if (!s || !is_alnum(s[0]))
		return false;
	size_t n = 1;
	for (const char *p = s + 1; *p; p++, n++) {
		if (n >= JV_IDENT_MAX)
			return false;
		if (!is_alnum(*p) && *p != '.' && *p != '_' && *p != '-')
			return false;
	}
	return true;
}

bool jv_job_type_valid(const char *s)
{
	if (!s || !(s[0] >= 'A' && s[0] <= 'Z'))
		return false;
	size_t n = 1;
	for (const char *p = s + 1; *p; p++, n++) {
		if (n >= 64)
			return false;
		if (!((*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '_'))
			return false;
	}
	return true;
}

bool jv_run_id_valid(const char *s)
{
	if (!s || !*s || s[0] == '.')
		return false;
	size_t n = 0;
	for (const char *p = s; *p; p++, n++) {
		if (n >= 128)
			return false;
		if (!is_alnum(*p) && *p != '.' && *p != '_' && *p != '-' && *p != ':')
			return false;
	}
	return true;
}
