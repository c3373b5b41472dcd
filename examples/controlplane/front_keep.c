/* front_keep.c — keep-alive between a client and the accept front.
 *
 * civetweb still answers every request with "Connection: close" and closes
 * (one loopback connection per request between the front and civetweb, so
 * no worker thread ever waits on an idle client). The client's connection
 * to the front, plain or TLS, is kept when the client may keep it (HTTP/1.1
 * without "Connection: close", or HTTP/1.0 with "Connection: keep-alive":
 * http_should_keep_alive) and the answer is framed by Content-Length: the
 * answer's head is held until it is complete, its "Connection: close" is
 * rewritten to "Connection: keep-alive" plus "Keep-Alive: timeout=N, max=M",
 * and once exactly head + Content-Length bytes went out (civetweb closing
 * its side ends the answer) the connection goes back to reading a request.
 *
 * Not kept, and the answer says close: a 1xx or an answer without
 * Content-Length, more or fewer bytes than announced, the front's own
 * refusals (400/401/408/431/503: the rest of the stream cannot be trusted to
 * be framed), the FRONT_KEEP_REQUESTS-th answer, answers while the process
 * stops (agents move to another replica), and pipelining: bytes that came
 * with or after a request before its answer are not read ahead — those the
 * front already read past the request (in the same read, or while the poll
 * was parked) are dropped and the connection closes after that answer;
 * those still in the socket are read, in order, as the next request.
 *
 * An idle kept connection (c->idle, on f->idle) costs an fd and its struct
 * (the request and answer buffers are freed). It waits FRONT_IDLE_MS for the
 * first byte of its next request (longer than the agent's own 60 s idle
 * limit, so the agent closes first); the head deadline FRONT_HEAD_MS starts
 * at that first byte, then every rule of a new connection applies. Idle
 * kept connections count in the per-address limit and are the first to go
 * when an address or the table is full: losing one costs the client a new
 * connection, nothing more. */
#include "front_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "jobvisor/util.h"

/* Of a header line "Name: value", the value (NULL when the name differs). */
static const char *header_value(const char *line, const char *end, const char *name)
{
	size_t n = strlen(name);
	if ((size_t)(end - line) <= n || strncasecmp(line, name, n) != 0 || line[n] != ':')
		return NULL;
	const char *v = line + n + 1;
	while (v < end && (*v == ' ' || *v == '\t'))
		v++;
	return v;
}

/* Content-Length of the head [p, end) (-1: none, repeated, bad, or chunked),
 * and where its Connection line is (*conn, *conn_len; NULL when none). */
static long long answer_framing(const char *p, const char *end, const char **conn, size_t *conn_len)
{
	long long clen = -1;
	int seen = 0;
	*conn = NULL;
	for (const char *line = memchr(p, '\n', (size_t)(end - p)); line && line + 1 < end;) {
		line++;
		const char *eol = memchr(line, '\n', (size_t)(end - line));
		if (!eol)
			break;
		const char *stop = eol > line && eol[-1] == '\r' ? eol - 1 : eol;
		const char *v;
		if ((v = header_value(line, stop, "Content-Length"))) {
			char *e;
			char num[24];
			size_t l = (size_t)(stop - v) < sizeof(num) - 1 ? (size_t)(stop - v) : sizeof(num) - 1;
			memcpy(num, v, l);
			num[l] = '\0';
			clen = strtoll(num, &e, 10);
			if (e == num || *e || clen < 0 || seen++)
				return -1;
		} else if (header_value(line, stop, "Transfer-Encoding")) {
			return -1;
		} else if (header_value(line, stop, "Connection")) {
			*conn = line;
			*conn_len = (size_t)(eol + 1 - line);
		}
		line = eol;
	}
	return clen;
}

bool front_answer_head(struct front *f, struct fconn *c)
{
	const char *end = c->out_len ? memmem(c->out, c->out_len, "\r\n\r\n", 4) : NULL;
	if (!end && !c->b_eof && c->out_len < FRONT_RELAY_BUF)
		return false;
	c->ans_head = true;
	if (!end || !c->keep || c->nreq + 1 >= FRONT_KEEP_REQUESTS || atomic_load(&f->release_all) ||
	    c->out_len < 12 || memcmp(c->out, "HTTP/1.", 7) != 0 || c->out[9] == '1') {
		c->keep = false; /* civetweb's own "Connection: close" stays */
		return true;
	}
	size_t head_len = (size_t)(end - c->out) + 4;
	const char *conn;
	size_t conn_len = 0;
	long long clen = answer_framing(c->out, end + 2, &conn, &conn_len);
	int status = atoi(c->out + 9);
	if (status == 204 || status == 304 || c->hp.method == HTTP_HEAD)
		clen = 0; /* no body, whatever Content-Length says */
	if (clen < 0 || (size_t)clen > SIZE_MAX / 2) {
		c->keep = false;
		return true;
	}
	char repl[96];
	int rl = snprintf(repl, sizeof(repl), "Connection: keep-alive\r\nKeep-Alive: timeout=%d, max=%u\r\n",
	                  FRONT_IDLE_MS / 1000, (unsigned)(FRONT_KEEP_REQUESTS - 1 - c->nreq));
	size_t at = conn ? (size_t)(conn - c->out) : head_len - 2;
	size_t grow = (size_t)rl - conn_len;
	if (rl <= 0 || (size_t)rl < conn_len || grow > FRONT_OUT_SLACK) {
		c->keep = false;
		return true;
	}
	memmove(c->out + at + (size_t)rl, c->out + at + conn_len, c->out_len - at - conn_len);
	memcpy(c->out + at, repl, (size_t)rl);
	c->out_len += grow;
	c->ans_expect = head_len + grow + (size_t)clen;
	return true;
}

/* The connection table's lists: the oldest idle kept connection. */
struct fconn *front_idle_oldest(struct front *f, bool by_ip, uint32_t ip)
{
	for (struct fconn *p = f->idle.head; p; p = p->pnext)
		if (!by_ip || p->ip == ip)
			return p;
	return NULL;
}

void front_keep(struct front *f, struct fconn *c)
{
	front_backend_close(f, c);
	flist_unlink(c);
	c->nreq++;
	c->st = FS_HEAD;
	c->idle = true;
	c->hold = false;
	c->deadline = jv_now_mono_ms() + FRONT_IDLE_MS;
	/* Everything of the request and answer before: the next one starts clean. */
	http_parser_init(&c->hp, HTTP_REQUEST);
	c->hp.data = c;
	jv_buf_free(&c->req);
	jv_buf_init(&c->req, FRONT_REQ_MAX);
	free(c->out);
	c->out = NULL;
	c->out_len = c->out_off = c->req_off = 0;
	c->limit = FRONT_ANON_MAX;
	c->reject = 0;
	c->reject_msg = NULL;
	c->head_done = c->msg_done = c->authed = c->upgrade = c->expect_continue = false;
	c->connected = c->b_eof = c->in_value = c->keep = c->ans_head = false;
	c->body_seen = c->url_len = c->field_len = c->auth_len = c->expect_len = c->mark_off = 0;
	c->ans_expect = c->ans_sent = 0;
	c->cur = c->nauth = 0;
	memset(c->path, 0, sizeof(c->path));
	c->field[0] = c->expect[0] = '\0';
	explicit_bzero(c->auth, sizeof(c->auth));
	flist_push(&f->idle, c);
}

void front_keep_wake(struct front *f, struct fconn *c, int64_t now)
{
	c->idle = false;
	flist_unlink(c);
	flist_push(&f->pending, c);
	c->born = now; /* for eviction: a request on its way is given FRONT_EVICT_MIN_MS */
	c->deadline = now + FRONT_HEAD_MS;
}
