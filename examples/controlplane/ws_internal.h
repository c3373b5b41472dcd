/* ws_internal.h — what ws.c (the ring, publishing, snapshots, agent
 * liveness batches) and ws_lws.c (the libwebsockets server and its one
 * service thread) share. Private to the control plane.
 *
 * Locks, always in this order: hub.list_mu -> cp->mu. The ring is guarded
 * by cp->mu (publishers hold it anyway); the client list and each client's
 * private queue by list_mu. Everything else about a client belongs to the
 * service thread. */
#ifndef JOBVISOR_WS_INTERNAL_H
#define JOBVISOR_WS_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cp.h"

#define WS_RING_SIZE 8192
#define WS_RING_BYTES (64u * 1024 * 1024)
#define WS_CLIENT_FRAME_MAX 65536
#define WS_CONSOLE_QUEUE_MAX 256               /* console messages waiting, per client */
#define WS_CONSOLE_QUEUE_BYTES (4u * 1024 * 1024)
#define WS_SEEN_MS 1000                        /* agents.seen at most this often */

struct ws_msg {
	char *text;
	size_t len;
};

#define WS_CHUNK 32768 /* a bigger message goes out in fragments of this, one per writeable */

/* Message text with room in front for the library's frame header
 * (LWS_PRE); shared (refs) when several clients send the same, like a
 * snapshot. */
struct ws_blob {
	atomic_int refs;
	size_t len;
	unsigned char buf[];
};

/* A message for one client only (hello, snapshot, answers, console lines). */
struct ws_out {
	struct ws_out *next;
	struct ws_blob *blob;
	bool console;
};

struct ws_client {
	struct lws *wsi;
	uint64_t next;             /* next ring seq to send (service thread) */
	int64_t since;             /* -1 = none */
	bool epoch_ok;
	bool closing;              /* overflow sent: close at the next chance */
	struct ws_blob *cur;       /* the message going out in fragments (service thread) */
	size_t cur_off;
	struct ws_out *q, *q_tail; /* private messages, in order (list_mu) */
	size_t q_console, q_bytes; /* console messages queued and their bytes (list_mu) */
	char *rx;                  /* a text message arriving in fragments */
	size_t rx_len;
	bool rx_skip;              /* this message is over WS_CLIENT_FRAME_MAX: ignore it */
	struct ws_client *next_client;
};

struct ws_hub {
	struct cp *cp;
	struct ws_msg ring[WS_RING_SIZE]; /* seq s lives at ring[s % WS_RING_SIZE]; cp->mu */
	uint64_t head;                    /* last published seq, 0 = none; cp->mu */
	uint64_t oldest;                  /* oldest seq still held (byte budget); cp->mu */
	size_t bytes;                     /* text held in the ring; cp->mu */
	atomic_uint_fast64_t head_seen;   /* head, readable without cp->mu */
	pthread_mutex_t list_mu;
	struct ws_client *clients;        /* list_mu for changes; the service thread reads freely */
	int nclients;                     /* service thread */
	int64_t seen_at;                  /* last agents.seen batch (main thread) */
	/* The last snapshot, reused while head has not moved (service thread). */
	struct ws_blob *snap;
	uint64_t snap_seq;
	/* libwebsockets (ws_lws.c) */
	struct lws_context *ctx;
	pthread_t thread;
	bool started;
	atomic_bool stop;
	atomic_bool wake;                 /* a wake-up is on its way to the service thread */
	uint16_t port;
	unsigned char *tx;                /* LWS_PRE + the ring entry being sent (service thread) */
	size_t tx_cap;
};

/* ---- ws.c ---- */
uint64_t ws_oldest_seq(const struct ws_hub *h); /* cp->mu held */
/* A client to be sent hello and then a ring replay or a snapshot: its first
 * private messages and c->next (service thread; takes cp->mu briefly). */
void ws_greet(struct ws_hub *h, struct ws_client *c);
/* Queue text (copied) for one client; console messages obey the per-client
 * limits. false when dropped. list_mu held. */
bool ws_queue(struct ws_client *c, const char *text, size_t len, bool console);
/* Queue a shared message (one more reference). list_mu held. */
bool ws_queue_blob(struct ws_client *c, struct ws_blob *b);
struct ws_blob *ws_blob_new(const char *text, size_t len); /* refs 1 */
void ws_blob_put(struct ws_blob *b);                         /* drop a reference */
/* A text message from a client: queue the answer (service thread). */
void ws_answer(struct ws_hub *h, struct ws_client *c, const char *data, size_t len);

/* ---- ws_lws.c ---- */
int ws_lws_start(struct ws_hub *h, char *err, size_t errlen);
void ws_lws_stop(struct ws_hub *h);   /* the service thread */
void ws_lws_free(struct ws_hub *h);   /* the context and its clients */
/* Wake the service thread: new ring messages or queued private ones. Any thread. */
void ws_lws_wake(struct ws_hub *h);

#endif
