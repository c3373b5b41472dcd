/* front_internal.h — what the accept front's files share: front.c (the
 * connection table, accepting, the thread, start and stop),
 * front_request.c (parsing the request head, moving bytes), front_park.c
 * (parked long polls), front_keep.c (keep-alive with the client) and
 * front_tls.c (TLS, the client side's I/O). Private
 * to the control plane. */
#ifndef JOBVISOR_FRONT_INTERNAL_H
#define JOBVISOR_FRONT_INTERNAL_H

#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <http_parser.h>

#include "cp.h"
#include "jobvisor/util.h"

#define FRONT_HEAD_MS 10000            /* whole request head, from accept or its first byte (kept) */
#define FRONT_BODY_MS 30000            /* whole body (token holders), from the end of the head */
#define FRONT_STALL_MS 30000           /* a client that takes no answer bytes for this long */
#define FRONT_LINGER_MS 2000           /* after a final answer: drain the client's input */
#define FRONT_HEAD_MAX 16384           /* request line + headers */
#define FRONT_ANON_MAX 32768           /* head + body of a request without a valid token */
#define FRONT_CHUNK_SLACK 65536        /* chunk framing on top of CP_BODY_MAX */
#define FRONT_RELAY_BUF 65536          /* answer bytes held per connection */
#define FRONT_OUT_SLACK 128            /* room past it for the keep-alive headers (front_keep.c) */
#define FRONT_IDLE_MS 65000            /* a kept connection waits this long for its next request */
#define FRONT_KEEP_REQUESTS 1000       /* requests per connection; the last answer says close */
#define FRONT_REQ_MAX (FRONT_HEAD_MAX + CP_BODY_MAX + FRONT_CHUNK_SLACK + FRONT_MARK_MAX)
#define FRONT_TUNNEL_BUF 65536         /* client bytes held per tunnel */
#define FRONT_PENDING_PER_CLIENT 256   /* requests still arriving, per client address */
#define FRONT_EVICT_MIN_MS 1000        /* a request is given this long before it may be evicted */
#define FRONT_CONNS_MAX 65536          /* all connections (also bounded by RLIMIT_NOFILE) */
#define FRONT_ACCEPT_BATCH 16
#define FRONT_TICK_MS 250
#define FRONT_REPORT_MS 60000
#define FRONT_MARK_MAX 64              /* the marker header inserted into relayed requests */
#define FRONT_FD_RESERVE 256           /* descriptors kept for the database, logs, civetweb */

/* HEAD, BODY: arriving. WAIT: complete, waiting for a free backend slot.
 * PROXY: at civetweb, its answer relayed. PARKED: a long poll with nothing
 * to say yet, held here without a backend connection or thread (front_park.c). */
enum fstate { FS_HEAD, FS_BODY, FS_WAIT, FS_PROXY, FS_PARKED, FS_TUNNEL, FS_LINGER };

struct fconn;
/* A FIFO of connections, linked through fconn.pprev/pnext. */
struct flist {
	struct fconn *head, *tail;
	size_t n;
};
struct fend {
	struct fconn *c;
	bool backend;
};

struct fconn {
	int cfd, bfd;
	enum fstate st;
	uint32_t ip;             /* client IPv4, network order */
	int64_t deadline;        /* CLOCK_MONOTONIC ms; 0 = none */
	int64_t born;            /* accepted at, CLOCK_MONOTONIC ms */
	http_parser hp;
	struct jv_buf req;       /* request bytes as received, forwarded unchanged */
	size_t req_off;          /* of req, sent to civetweb */
	size_t limit;            /* request bytes allowed */
	int reject;              /* answer the front gives instead (status), 0 = none */
	const char *reject_msg;  /* its message (static), NULL = the status's usual one */
	bool head_done, msg_done, authed, upgrade, expect_continue, connected, b_eof, closed;
	bool keep;               /* the client may keep the connection after this answer */
	bool idle;               /* FS_HEAD, kept, no byte of the next request yet (on f->idle) */
	bool ans_head;           /* the relayed answer's head was looked at (front_keep.c) */
	uint32_t nreq;           /* answers completed on this connection */
	size_t ans_expect;       /* kept: bytes of the whole answer (head + Content-Length) */
	size_t ans_sent;         /* bytes of the answer sent to the client */
	size_t body_seen;        /* body bytes parsed so far */
	bool in_value;           /* http_parser header callbacks: value follows field */
	size_t url_len;          /* request target bytes seen */
	char path[16];           /* its start, enough to recognise "/v1/ws" */
	int cur;                 /* header being read: 0 other, 1 Authorization, 2 Expect */
	int nauth;
	char field[24];
	size_t field_len;
	char auth[CP_TOKEN_MAX + 16];
	size_t auth_len;
	char expect[24];
	size_t expect_len;
	char *out;               /* answer bytes for the client */
	size_t out_len, out_off;
	uint32_t cmask, bmask;   /* armed epoll events */
	struct fend cend, bend;
	size_t mark_off;         /* of req: the marker's wait digits (front_park.c) */
	bool hold;               /* answer not yet released to the client: may be a park */
	bool slot;               /* holds one of the backend slots (f->inflight) */
	uint32_t agent;          /* parked: index in cp->agents */
	struct ssl_st *ssl;      /* TLS (front_tls.c), NULL = plain HTTP */
	bool tls_peeked, tls_up; /* first byte seen to be a handshake; handshake done */
	uint32_t tls_want;       /* an epoll event a waiting TLS read needs besides the state's */
	bool rqueued;            /* on f->ready: decrypted bytes wait inside OpenSSL */
	struct fconn *rnext;
	struct fconn *prev, *next;   /* every connection, oldest first */
	struct flist *list;          /* the list below is in: pending, waiting or parked */
	struct fconn *pprev, *pnext; /* that list, oldest first */
};

struct front {
	struct cp *cp;
	int lfd, epfd, wakefd;
	uint16_t port;           /* public, host order */
	struct sockaddr_in backend;    /* civetweb */
	struct sockaddr_in ws_backend; /* the WebSocket server (ws_lws.c): GET /v1/ws is tunnelled there */
	pthread_t thread;
	bool started;
	atomic_bool stop;
	struct fend lend;            /* the listening socket's epoll tag */
	struct fconn *head, *tail;   /* all */
	struct fconn *dead;          /* closed during this epoll batch, freed after it */
	struct fconn *ready;         /* readable without epoll (front_tls_pending), via rnext */
	struct flist pending;        /* FS_HEAD/FS_BODY */
	struct flist idle;           /* kept connections between requests (FS_HEAD, c->idle) */
	struct flist waiting[2];     /* FS_WAIT: [0] new requests and woken polls, [1] expired polls */
	struct flist *parked;        /* FS_PARKED, one list per agent (cp->nagents) */
	size_t nconns, conns_max;
	size_t inflight, inflight_max; /* requests at civetweb (tunnels not counted) */
	size_t nparked;
	char secret[CP_FRONT_SECRET_LEN + 1]; /* marks the requests we relay (cp->front_secret) */
	int64_t next_tick;
	/* Wake-ups from handler threads (front_wake), taken by the front's thread. */
	pthread_mutex_t qmu;
	uint32_t *queue;   /* agent indexes, each at most once */
	size_t qlen;
	uint64_t *wgen;    /* per agent: the newest wake generation told (qmu) */
	bool *queued;      /* per agent: in queue (qmu) */
	atomic_bool release_all; /* stopping: every parked poll answers now */
	atomic_size_t busy;      /* parked + waiting + at civetweb, after each loop (front_drain) */
	/* Reported at most once a minute. */
	unsigned long evicted, timed_out, refused, tls_failed;
	uint32_t last_ip;
	char tls_last_err[96];   /* why the last TLS handshake failed */
	int64_t last_report, last_tls_report;
};

/* ---- front.c ---- */
void front_conn_close(struct front *f, struct fconn *c);
int front_arm(struct front *f, struct fconn *c);
void front_answer(struct front *f, struct fconn *c, int status, const char *extra, const char *msg);
void front_linger(struct front *f, struct fconn *c);
void front_backend_close(struct front *f, struct fconn *c);
void front_pending_unlink(struct front *f, struct fconn *c);
void flist_push(struct flist *l, struct fconn *c);
void flist_unlink(struct fconn *c);

/* ---- front_request.c ---- */
void front_read_request(struct front *f, struct fconn *c);
void front_relay(struct front *f, struct fconn *c, bool backend, uint32_t ev);
void front_on_linger(struct front *f, struct fconn *c);
/* Send a complete request on (now, or when a backend slot frees: prio 0 before 1). */
void front_forward(struct front *f, struct fconn *c, int prio);
/* Connect to civetweb for c (FS_WAIT -> FS_PROXY/FS_TUNNEL). */
void front_connect_backend(struct front *f, struct fconn *c);

/* ---- front_tls.c: the client side's I/O, plain or TLS ---- */
/* A new connection gets its SSL when the front has TLS; -ENOMEM. */
int front_tls_attach(struct front *f, struct fconn *c);
void front_tls_detach(struct fconn *c);
/* Decrypted bytes are waiting inside OpenSSL (epoll will not say so). */
bool front_tls_pending(const struct fconn *c);
/* The handshake step, FS_HEAD: 1 done, 0 waiting (armed), -1 c is closed or
 * answered (plain HTTP on the TLS port gets a plain 400). */
int front_tls_handshake(struct front *f, struct fconn *c);
/* recv/send on the client: bytes (> 0), 0 = the client closed (read),
 * -EAGAIN = not now (front_arm asks for what it waits for), other -errno. */
ssize_t front_cread(struct fconn *c, void *buf, size_t len);
ssize_t front_cwrite(struct fconn *c, const void *buf, size_t len);
/* After the final answer: TLS close_notify (if TLS), then SHUT_WR. */
void front_cshutdown(struct fconn *c);

/* ---- front_keep.c: keep-alive between the client and the front ---- */
/* Look at the relayed answer's head before its first byte goes out: false =
 * not all of it is here yet (hold). Decides c->keep for this answer and
 * rewrites "Connection: close" when the connection is kept. */
bool front_answer_head(struct front *f, struct fconn *c);
/* The answer went out whole: wait for the next request on c (idle). */
void front_keep(struct front *f, struct fconn *c);
/* The first bytes of the next request arrived on an idle kept connection. */
void front_keep_wake(struct front *f, struct fconn *c, int64_t now);
/* The kept connection to give up first: of ip (or any when !by_ip), NULL if none. */
struct fconn *front_idle_oldest(struct front *f, bool by_ip, uint32_t ip);

/* ---- front_park.c ---- */
int front_park_init(struct front *f);
void front_park_free(struct front *f);
/* Insert the marker after the request line (before forwarding the first time). */
int front_mark(struct front *f, struct fconn *c);
/* civetweb answered 299 (all of it is in c->out): park c, or answer 502. */
void front_park(struct front *f, struct fconn *c);
/* The parked client sent something or went away. */
void front_on_parked(struct front *f, struct fconn *c);
/* Parked polls whose deadline passed, or all of them when stopping (front thread). */
void front_park_expire(struct front *f, struct fconn *c, int64_t now);
/* Take the wake-up queue (front thread). */
void front_take_wakes(struct front *f);
/* Start waiting requests while backend slots are free (front thread). */
void front_start_waiting(struct front *f);

#endif
