/* ws_lws.c — the WebSocket server: libwebsockets on an ephemeral 127.0.0.1
 * port, one service thread for every client.
 *
 * The accept front (front.c) tunnels each GET /v1/ws upgrade here byte for
 * byte, so TLS and connection limits stay in one place. The handshake is
 * checked in LWS_CALLBACK_HTTP_CONFIRM_UPGRADE (admin or named token, the
 * client limit) and refused with a JSON answer like the API's. A client
 * costs no thread: publishers put messages in the ring (ws.c) and wake the
 * service thread with lws_cancel_service; on LWS_CALLBACK_EVENT_WAIT_CANCELLED
 * every client with something to send asks for LWS_CALLBACK_SERVER_WRITEABLE,
 * where it sends one message — its private queue first (hello, snapshot,
 * answers, console lines), then the ring from its own next seq — and asks
 * again while more is waiting. A slow client therefore only falls behind in
 * the ring; once behind its oldest entry it gets `overflow` and is closed.
 * Requests from the page (events, console.watch) are answered on this thread. */
#include "ws_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <libwebsockets.h>

#include "jobvisor/jsonutil.h"
#include "jobvisor/log.h"
#include "jobvisor/util.h"

/* Pings after 30 s of quiet, hang up after 60 s without an answer. */
static const lws_retry_bo_t ws_idle = {.secs_since_valid_ping = 30, .secs_since_valid_hangup = 60};

void ws_lws_wake(struct ws_hub *h)
{
	if (h->ctx && !atomic_exchange(&h->wake, true))
		lws_cancel_service(h->ctx);
}

static int refuse(struct lws *wsi, unsigned status, const char *body, const char *hname, const char *hval)
{
	unsigned char buf[LWS_PRE + 512], *start = buf + LWS_PRE, *p = start, *end = buf + sizeof(buf) - 1;
	size_t len = strlen(body);
	if (lws_add_http_common_headers(wsi, status | LWSAHH_FLAG_NO_SERVER_NAME, "application/json", len, &p, end) ||
	    (hname && lws_add_http_header_by_name(wsi, (const unsigned char *)hname, (const unsigned char *)hval,
	                                          (int)strlen(hval), &p, end)) ||
	    lws_add_http_header_by_name(wsi, (const unsigned char *)"connection:", (const unsigned char *)"close", 5, &p,
	                                end) ||
	    lws_finalize_write_http_header(wsi, start, &p, end))
		return -1;
	unsigned char out[LWS_PRE + 128];
	if (len > sizeof(out) - LWS_PRE)
		return -1;
	memcpy(out + LWS_PRE, body, len);
	if (lws_write(wsi, out + LWS_PRE, len, LWS_WRITE_HTTP_FINAL) < 0)
		return -1;
	return 1;
}

/* The admin token or a named one, as Authorization: Bearer or ?token=. */
static enum http_auth authenticate(struct cp *cp, struct lws *wsi)
{
	char hdr[CP_TOKEN_MAX + 32] = "", arg[CP_TOKEN_MAX + 16] = "";
	const char *tok = NULL;
	int n = lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_AUTHORIZATION);
	if (n > 0 && n < (int)sizeof(hdr) && lws_hdr_copy(wsi, hdr, sizeof(hdr), WSI_TOKEN_HTTP_AUTHORIZATION) > 0 &&
	    strncasecmp(hdr, "Bearer ", 7) == 0) {
		tok = hdr + 7;
		while (*tok == ' ')
			tok++;
	}
	if (!tok)
		tok = lws_get_urlarg_by_name(wsi, "token=", arg, sizeof(arg));
	struct cp_agent *agent = NULL;
	enum http_auth auth = tok ? http_token_auth(cp, tok, strnlen(tok, CP_TOKEN_MAX + 1), &agent, NULL) : AUTH_NONE;
	explicit_bzero(hdr, sizeof(hdr));
	explicit_bzero(arg, sizeof(arg));
	return auth;
}

static int confirm_upgrade(struct ws_hub *h, struct lws *wsi)
{
	enum http_auth auth = authenticate(h->cp, wsi);
	if (auth == AUTH_NONE)
		return refuse(wsi, 401, "{\"error\":\"unauthorized\"}", "WWW-Authenticate:", "Bearer");
	if (auth != AUTH_ADMIN)
		return refuse(wsi, 403, "{\"error\":\"the stream needs the admin token\"}", NULL, NULL);
	if (h->nclients >= h->cp->ws_max)
		return refuse(wsi, 503, "{\"error\":\"too many WebSocket clients\"}", "Retry-After:", "5");
	return 0;
}

static void established(struct ws_hub *h, struct lws *wsi, struct ws_client **slot)
{
	struct ws_client *c = calloc(1, sizeof(*c));
	*slot = c;
	if (!c)
		return;
	char buf[64], ep[64];
	const char *since = lws_get_urlarg_by_name(wsi, "since=", buf, sizeof(buf));
	const char *epoch = lws_get_urlarg_by_name(wsi, "epoch=", ep, sizeof(ep));
	c->wsi = wsi;
	c->since = -1;
	if (since) {
		char *end = NULL;
		long long v = strtoll(since, &end, 10);
		if (*since && !*end && v >= 0)
			c->since = v;
	}
	c->epoch_ok = epoch && strcmp(epoch, h->cp->epoch) == 0;
	h->nclients++;
	ws_greet(h, c);
	pthread_mutex_lock(&h->list_mu);
	c->next_client = h->clients;
	h->clients = c;
	pthread_mutex_unlock(&h->list_mu);
	lws_callback_on_writable(wsi);
}

static void closed(struct ws_hub *h, struct ws_client *c)
{
	pthread_mutex_lock(&h->list_mu);
	for (struct ws_client **pp = &h->clients; *pp; pp = &(*pp)->next_client) {
		if (*pp == c) {
			*pp = c->next_client;
			break;
		}
	}
	for (struct ws_out *o = c->q, *n; o; o = n) {
		n = o->next;
		ws_blob_put(o->blob);
		free(o);
	}
	ws_blob_put(c->cur);
	pthread_mutex_unlock(&h->list_mu);
	console_client_gone(h->cp, c);
	h->nclients--;
	free(c->rx);
	free(c);
}

/* list_mu held (c->q). */
static bool has_work(struct ws_hub *h, const struct ws_client *c)
{
	return c->cur || c->q || c->closing || c->next <= atomic_load(&h->head_seen);
}

/* Room for LWS_PRE + n bytes in h->tx, the service thread's send buffer. */
static bool tx_room(struct ws_hub *h, size_t n)
{
	if (LWS_PRE + n <= h->tx_cap)
		return true;
	unsigned char *tx = realloc(h->tx, LWS_PRE + n);
	if (!tx)
		return false;
	h->tx = tx;
	h->tx_cap = LWS_PRE + n;
	return true;
}

/* The next ring entry for c: a small one into h->tx (*len), a big one as
 * c->cur to go out in fragments. false: c fell out of the ring and was
 * given `overflow` to send. */
static bool next_from_ring(struct ws_hub *h, struct ws_client *c, size_t *len)
{
	struct cp *cp = h->cp;
	bool ok = true;
	*len = 0;
	pthread_mutex_lock(&cp->mu);
	if (c->next < ws_oldest_seq(h)) {
		ok = false;
	} else if (c->next <= h->head) {
		const struct ws_msg *m = &h->ring[c->next % WS_RING_SIZE];
		if (m->text && m->len > WS_CHUNK) {
			c->cur = ws_blob_new(m->text, m->len);
			c->cur_off = 0;
		} else if (m->text && tx_room(h, m->len)) {
			memcpy(h->tx + LWS_PRE, m->text, m->len);
			*len = m->len;
		}
		c->next++;
	}
	pthread_mutex_unlock(&cp->mu);
	if (!ok) {
		/* Too far behind to catch up from the ring: it reconnects and gets a snapshot. */
		static const char bye[] = "{\"type\":\"overflow\"}";
		pthread_mutex_lock(&h->list_mu);
		ws_queue(c, bye, sizeof(bye) - 1, false);
		pthread_mutex_unlock(&h->list_mu);
		c->closing = true;
	}
	return ok;
}

/* The next fragment of c->cur (copied: the blob may be shared, and the
 * library writes the frame header in front of what it sends). */
static int send_part(struct ws_hub *h, struct ws_client *c)
{
	struct ws_blob *b = c->cur;
	size_t n = b->len - c->cur_off > WS_CHUNK ? WS_CHUNK : b->len - c->cur_off;
	int flags = c->cur_off ? LWS_WRITE_CONTINUATION : LWS_WRITE_TEXT;
	if (c->cur_off + n < b->len)
		flags |= LWS_WRITE_NO_FIN;
	if (!tx_room(h, WS_CHUNK))
		return -1;
	memcpy(h->tx + LWS_PRE, b->buf + LWS_PRE + c->cur_off, n);
	if (lws_write(c->wsi, h->tx + LWS_PRE, n, (enum lws_write_protocol)flags) < (int)n)
		return -1;
	c->cur_off += n;
	if (c->cur_off == b->len) {
		ws_blob_put(b);
		c->cur = NULL;
	}
	return 0;
}

/* One frame to c: a fragment of the message going out, the next private
 * message, or the next ring entry. <0: close. */
static int write_one(struct ws_hub *h, struct ws_client *c)
{
	if (!c->cur) {
		pthread_mutex_lock(&h->list_mu);
		struct ws_out *o = c->q;
		if (o) {
			c->q = o->next;
			if (!c->q)
				c->q_tail = NULL;
			c->q_console -= o->console;
			c->q_bytes -= o->blob->len;
		}
		pthread_mutex_unlock(&h->list_mu);
		if (o) {
			c->cur = o->blob;
			c->cur_off = 0;
			free(o);
		}
	}
	int rc = 0;
	size_t len = 0;
	if (!c->cur && c->closing) {
		lws_close_reason(c->wsi, LWS_CLOSE_STATUS_POLICY_VIOLATION, NULL, 0);
		return -1;
	}
	if (!c->cur && next_from_ring(h, c, &len) && len &&
	    lws_write(c->wsi, h->tx + LWS_PRE, len, LWS_WRITE_TEXT) < (int)len)
		rc = -1;
	else if (c->cur && !len)
		rc = send_part(h, c);
	pthread_mutex_lock(&h->list_mu);
	bool more = rc == 0 && has_work(h, c);
	pthread_mutex_unlock(&h->list_mu);
	if (more)
		lws_callback_on_writable(c->wsi);
	return rc;
}

/* A text message from the page, maybe in fragments: assembled up to
 * WS_CLIENT_FRAME_MAX; binary and bigger ones are ignored. */
static void receive(struct ws_hub *h, struct ws_client *c, struct lws *wsi, const void *in, size_t len)
{
	if (lws_is_first_fragment(wsi)) {
		c->rx_len = 0;
		c->rx_skip = lws_frame_is_binary(wsi);
	}
	if (!c->rx_skip && c->rx_len + len > WS_CLIENT_FRAME_MAX)
		c->rx_skip = true;
	if (!c->rx_skip) {
		if (!c->rx)
			c->rx = malloc(WS_CLIENT_FRAME_MAX);
		if (!c->rx) {
			c->rx_skip = true;
		} else {
			memcpy(c->rx + c->rx_len, in, len);
			c->rx_len += len;
		}
	}
	if (!lws_is_final_fragment(wsi) || lws_remaining_packet_payload(wsi) > 0)
		return;
	if (!c->rx_skip)
		ws_answer(h, c, c->rx, c->rx_len);
	free(c->rx); /* held only while a message arrives */
	c->rx = NULL;
	c->rx_len = 0;
	lws_callback_on_writable(wsi);
}

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
	struct ws_hub *h = lws_context_user(lws_get_context(wsi));
	struct ws_client **slot = user;
	switch (reason) {
	case LWS_CALLBACK_HTTP_CONFIRM_UPGRADE:
		return confirm_upgrade(h, wsi);
	case LWS_CALLBACK_HTTP:
		/* Only upgrades come here (the front sends nothing else). */
		return refuse(wsi, 404, "{\"error\":\"not found\"}", NULL, NULL);
	case LWS_CALLBACK_ESTABLISHED:
		established(h, wsi, slot);
		return *slot ? 0 : -1;
	case LWS_CALLBACK_CLOSED:
		if (*slot)
			closed(h, *slot);
		*slot = NULL;
		return 0;
	case LWS_CALLBACK_SERVER_WRITEABLE:
		return *slot ? write_one(h, *slot) : -1;
	case LWS_CALLBACK_RECEIVE:
		if (*slot && !(*slot)->closing)
			receive(h, *slot, wsi, in, len);
		return 0;
	case LWS_CALLBACK_EVENT_WAIT_CANCELLED:
		atomic_store(&h->wake, false);
		pthread_mutex_lock(&h->list_mu);
		for (struct ws_client *c = h->clients; c; c = c->next_client)
			if (has_work(h, c))
				lws_callback_on_writable(c->wsi);
		pthread_mutex_unlock(&h->list_mu);
		return 0;
	default:
		return lws_callback_http_dummy(wsi, reason, user, in, len);
	}
}

static const struct lws_protocols protocols[] = {
	{.name = "jobvisor", .callback = callback, .per_session_data_size = sizeof(struct ws_client *)},
	{.name = NULL},
};

static void log_from_lws(int level, const char *line)
{
	size_t n = strlen(line);
	while (n && (line[n - 1] == '\n' || line[n - 1] == ' '))
		n--;
	if (level & LLL_ERR)
		jv_error(NULL, NULL, "websocket: %.*s", (int)n, line);
	else
		jv_warn(NULL, NULL, "websocket: %.*s", (int)n, line);
}

static void *service(void *arg)
{
	struct ws_hub *h = arg;
	while (!atomic_load(&h->stop))
		if (lws_service(h->ctx, 0) < 0)
			break;
	return NULL;
}

int ws_lws_start(struct ws_hub *h, char *err, size_t errlen)
{
	lws_set_log_level(LLL_ERR | LLL_WARN, log_from_lws);
	struct lws_context_creation_info info;
	memset(&info, 0, sizeof(info));
	info.port = 0; /* any free one: only the front connects */
	info.iface = "127.0.0.1";
	info.protocols = protocols;
	info.user = h;
	/* No UTF-8 validation by the library: bad text gets the error message that names the field. */
	info.options = LWS_SERVER_OPTION_DISABLE_IPV6;
	info.retry_and_idle_policy = &ws_idle;
	/* The descriptor table is sized from this: clients, handshakes, slack. */
	info.fd_limit_per_thread = (unsigned)h->cp->ws_max + 64;
	info.vhost_name = "jobvisor-ws";
	h->ctx = lws_create_context(&info);
	struct lws_vhost *vh = h->ctx ? lws_get_vhost_by_name(h->ctx, "jobvisor-ws") : NULL;
	int port = vh ? lws_get_vhost_listen_port(vh) : -1;
	if (port <= 0) {
		snprintf(err, errlen, "cannot start the WebSocket server (libwebsockets) on 127.0.0.1");
		if (h->ctx)
			lws_context_destroy(h->ctx);
		h->ctx = NULL;
		return -EIO;
	}
	h->port = (uint16_t)port;
	int rc = pthread_create(&h->thread, NULL, service, h);
	if (rc != 0) {
		snprintf(err, errlen, "cannot start the WebSocket thread: %s", strerror(rc));
		lws_context_destroy(h->ctx);
		h->ctx = NULL;
		return -rc;
	}
	h->started = true;
	return 0;
}

void ws_lws_stop(struct ws_hub *h)
{
	if (!h->started)
		return;
	atomic_store(&h->stop, true);
	lws_cancel_service(h->ctx);
	pthread_join(h->thread, NULL);
	h->started = false;
}

void ws_lws_free(struct ws_hub *h)
{
	/* Late publishers (handler threads still finishing) may wake it until here. */
	if (h->ctx)
		lws_context_destroy(h->ctx); /* closes every client (CLOSED runs here) */
	h->ctx = NULL;
	free(h->tx);
	h->tx = NULL;
}
