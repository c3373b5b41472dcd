/* utf8.h — checking and repairing UTF-8, so every text jobvisor emits is valid.
 *
 * Valid means RFC 3629: no overlong forms (so never C0 80), no surrogates,
 * nothing above U+10FFFF. Repair replaces each byte that does not start a
 * valid sequence with U+FFFD (EF BF BD) and goes on with the next byte; the
 * pair C0 80 (a NUL as jsonutil stores it) becomes one U+FFFD. */
#ifndef JOBVISOR_UTF8_H
#define JOBVISOR_UTF8_H

#include <stdbool.h>
#include <stddef.h>

#define JV_UTF8_REPLACEMENT "\xEF\xBF\xBD"

/* Length (1-4) of the valid sequence at s (n bytes available), 0 when s does not start one. */
size_t jv_utf8_seq(const char *s, size_t n);
/* Whether n bytes at s are valid UTF-8 (NUL bytes count as valid). */
bool jv_utf8_valid(const char *s, size_t n);
/* A NUL-terminated copy of n bytes at s with invalid bytes replaced; *out_len
 * (optional) gets its length. Returned-owned: free(). NULL on ENOMEM. */
char *jv_utf8_repair(const char *s, size_t n, size_t *out_len);

#endif
