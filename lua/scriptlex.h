/* scriptlex.h — tokens of a Lua script, for positions in `jobvisor check`
 * reports (lua/scriptlex.c). */
#ifndef JOBVISOR_SCRIPTLEX_H
#define JOBVISOR_SCRIPTLEX_H

#include <stdbool.h>
#include <stddef.h>

enum jv_tok_kind { JV_TOK_NAME, JV_TOK_STRING, JV_TOK_NUMBER, JV_TOK_OP };

struct jv_tok {
	enum jv_tok_kind kind;
	const char *s; /* borrowed from the source text */
	size_t len;
	int line;
};

struct jv_lex {
	struct jv_tok *v;
	size_t n, cap;
};

/* Tokenize src (borrowed; must outlive lx). 0, or -1 out of memory. Free with jv_lex_free. */
int jv_lex(const char *src, size_t len, struct jv_lex *lx);
void jv_lex_free(struct jv_lex *lx);
bool jv_tok_is(const struct jv_tok *t, enum jv_tok_kind k, const char *s);
/* Line of the first `field =` that is not `x.field =`, or 0. */
int jv_lex_field_line(const struct jv_lex *lx, const char *field);

#endif
