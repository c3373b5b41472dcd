/* utf8.c — UTF-8 validation and repair (see utf8.h). */
#include "jobvisor/utf8.h"

#include <stdlib.h>
#include <string.h>

size_t jv_utf8_seq(const char *s, size_t n)
{
	const unsigned char *p = (const unsigned char *)s;
	if (n == 0)
		return 0;
	unsigned c = p[0];
	if (c < 0x80)
		return 1;
	size_t len;
	unsigned lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
	if (c >= 0xC2 && c <= 0xDF) {
		len = 2;
	} else if (c >= 0xE0 && c <= 0xEF) {
		len = 3;
		if (c == 0xE0)
			lo = 0xA0; /* no overlongs */
		else if (c == 0xED)
			hi = 0x9F; /* no surrogates */
	} else if (c >= 0xF0 && c <= 0xF4) {
		len = 4;
		if (c == 0xF0)
			lo = 0x90;
		else if (c == 0xF4)
			hi = 0x8F; /* nothing above U+10FFFF */
	} else {
		return 0; /* continuation byte, C0/C1 (overlong), F5-FF */
	}
	if (n < len || p[1] < lo || p[1] > hi)
		return 0;
	for (size_t i = 2; i < len; i++)
		if ((p[i] & 0xC0) != 0x80)
			return 0;
	return len;
}

bool jv_utf8_valid(const char *s, size_t n)
{
	for (size_t i = 0; i < n;) {
		if ((unsigned char)s[i] < 0x80) {
			i++;
			continue;
		}
		size_t k = jv_utf8_seq(s + i, n - i);
		if (!k)
			return false;
		i += k;
	}
	return true;
}

/* Bytes taken by one invalid unit at s: the pair C0 80 (how jv_json_parse
 * stores a NUL) is one character, anything else one byte. */
static size_t bad_unit(const char *s, size_t n)
{
	return n >= 2 && (unsigned char)s[0] == 0xC0 && (unsigned char)s[1] == 0x80 ? 2 : 1;
}

char *jv_utf8_repair(const char *s, size_t n, size_t *out_len)
{
	size_t bad = 0;
	for (size_t i = 0; i < n;) {
		size_t k = jv_utf8_seq(s + i, n - i);
		if (!k) {
			bad++;
			k = bad_unit(s + i, n - i);
		}
		i += k;
	}
	size_t len = n + bad * 2; /* one byte becomes three */
	char *out = malloc(len + 1);
	if (!out)
		return NULL;
	size_t o = 0;
	for (size_t i = 0; i < n;) {
		size_t k = jv_utf8_seq(s + i, n - i);
		if (k) {
			memcpy(out + o, s + i, k);
			o += k;
			i += k;
		} else {
			memcpy(out + o, JV_UTF8_REPLACEMENT, 3);
			o += 3;
			i += bad_unit(s + i, n - i);
		}
	}
	out[o] = '\0';
	if (out_len)
		*out_len = o;
	return out;
}
