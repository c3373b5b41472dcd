/* scriptlex.c — a small Lua tokenizer for what `jobvisor check` and script
 * loading report without running anything: the line where a field of the
 * script table is written, and every `module.name` a script uses.
 *
 * It knows names, strings (short and long), comments (short and long),
 * numbers and punctuation; it does not parse. Lua's own parser has already
 * accepted (or rejected) the text; this only finds positions. */
#include "scriptlex.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

/* Length of a long bracket opener "[==[" at p (level in *level), or 0. */
static size_t long_open(const char *p, const char *end, int *level)
{
	if (p >= end || *p != '[')
		return 0;
	const char *q = p + 1;
	int n = 0;
	while (q < end && *q == '=') {
		n++;
		q++;
	}
	if (q >= end || *q != '[')
		return 0;
	*level = n;
	return (size_t)(q + 1 - p);
}

/* Skip to after the matching "]==]"; counts lines. */
static const char *long_close(const char *p, const char *end, int level, int *line)
{
	for (; p < end; p++) {
		if (*p == '\n')
			(*line)++;
		if (*p == ']') {
			const char *q = p + 1;
			int n = 0;
			while (q < end && *q == '=') {
				n++;
				q++;
			}
			if (n == level && q < end && *q == ']')
				return q + 1;
		}
	}
	return end;
}

static int push(struct jv_lex *lx, enum jv_tok_kind k, const char *s, size_t len, int line)
{
	if (lx->n == lx->cap) {
		size_t cap = lx->cap ? lx->cap * 2 : 256;
		struct jv_tok *v = realloc(lx->v, cap * sizeof(*v));
		if (!v)
			return -1;
		lx->v = v;
		lx->cap = cap;
	}
	lx->v[lx->n++] = (struct jv_tok){k, s, len, line};
	return 0;
}

int jv_lex(const char *src, size_t len, struct jv_lex *lx)
{
	memset(lx, 0, sizeof(*lx));
	const char *p = src, *end = src + len;
	int line = 1, level;
	size_t ol;
	if (p < end && *p == '#') /* a #! line */
		while (p < end && *p != '\n')
			p++;
	while (p < end) {
		char c = *p;
		if (c == '\n') {
			line++;
			p++;
		} else if (isspace((unsigned char)c)) {
			p++;
		} else if (c == '-' && p + 1 < end && p[1] == '-') {
			p += 2;
			if ((ol = long_open(p, end, &level)) > 0) {
				p = long_close(p + ol, end, level, &line);
			} else {
				while (p < end && *p != '\n')
					p++;
			}
		} else if ((ol = long_open(p, end, &level)) > 0) {
			int at = line;
			const char *s = p;
			p = long_close(p + ol, end, level, &line);
			if (push(lx, JV_TOK_STRING, s, (size_t)(p - s), at) < 0)
				return -1;
		} else if (c == '"' || c == '\'') {
			const char *s = p++;
			int at = line;
			while (p < end && *p != c && *p != '\n') {
				if (*p == '\\' && p + 1 < end) {
					if (p[1] == '\n')
						line++;
					if (p[1] == 'z') { /* \z skips following whitespace, newlines too */
						p += 2;
						while (p < end && isspace((unsigned char)*p)) {
							if (*p == '\n')
								line++;
							p++;
						}
						continue;
					}
					p++;
				}
				p++;
			}
			if (p < end && *p == c)
				p++;
			if (push(lx, JV_TOK_STRING, s, (size_t)(p - s), at) < 0)
				return -1;
		} else if (isalpha((unsigned char)c) || c == '_') {
			const char *s = p;
			while (p < end && (isalnum((unsigned char)*p) || *p == '_'))
				p++;
			if (push(lx, JV_TOK_NAME, s, (size_t)(p - s), line) < 0)
				return -1;
		} else if (isdigit((unsigned char)c) || (c == '.' && p + 1 < end && isdigit((unsigned char)p[1]))) {
			const char *s = p;
			while (p < end && (isalnum((unsigned char)*p) || *p == '.' || *p == '_' ||
			                   ((*p == '-' || *p == '+') && strchr("eEpP", p[-1]))))
				p++;
			if (push(lx, JV_TOK_NUMBER, s, (size_t)(p - s), line) < 0)
				return -1;
		} else {
			/* Operators: the multi-character ones that matter here are "==", "..", "...", "::". */
			const char *s = p;
			size_t n = 1;
			if (p + 1 < end && ((c == '=' && p[1] == '=') || (c == '.' && p[1] == '.') ||
			                    (c == ':' && p[1] == ':') || (c == '~' && p[1] == '=') ||
			                    (c == '<' && p[1] == '=') || (c == '>' && p[1] == '=')))
				n = (c == '.' && p + 2 < end && p[2] == '.') ? 3 : 2;
			p += n;
			if (push(lx, JV_TOK_OP, s, n, line) < 0)
				return -1;
		}
	}
	return 0;
}

void jv_lex_free(struct jv_lex *lx)
{
	free(lx->v);
	memset(lx, 0, sizeof(*lx));
}

bool jv_tok_is(const struct jv_tok *t, enum jv_tok_kind k, const char *s)
{
	return t->kind == k && strlen(s) == t->len && memcmp(t->s, s, t->len) == 0;
}

int jv_lex_field_line(const struct jv_lex *lx, const char *field)
{
	for (size_t i = 0; i + 1 < lx->n; i++)
		if (jv_tok_is(&lx->v[i], JV_TOK_NAME, field) && jv_tok_is(&lx->v[i + 1], JV_TOK_OP, "=") &&
		    (i == 0 || !(jv_tok_is(&lx->v[i - 1], JV_TOK_OP, ".") ||
		                 jv_tok_is(&lx->v[i - 1], JV_TOK_OP, ":"))))
			return lx->v[i].line;
	return 0;
}
