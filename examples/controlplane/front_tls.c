/* front_tls.c — TLS on the accept front (--tls-cert, --tls-key), with OpenSSL.
 *
 * The front terminates TLS itself: civetweb still sees plain requests on
 * 127.0.0.1, and every rule of front.c (deadlines, eviction, parking, limits,
 * malformed-HTTP refusals) applies to the decrypted bytes unchanged. This
 * file owns the SSL_CTX (loaded at start, replaced on SIGHUP) and the
 * client-side I/O of a connection: front_cread / front_cwrite /
 * front_cshutdown are recv / send / shutdown(SHUT_WR) for a plain connection
 * and SSL_read / SSL_write / close_notify for a TLS one, so the state machine
 * in front.c and front_request.c has one code path for both.
 *
 * Non-blocking OpenSSL and epoll: the handshake runs in FS_HEAD under the
 * head deadline (FRONT_HEAD_MS from the accept), so a client that never
 * finishes it holds a pending slot for at most that long and is subject to
 * the same per-address eviction as a slow request head. A TLS operation that
 * must wait for the other direction (SSL_ERROR_WANT_WRITE while reading) is
 * remembered in c->tls_want and front_arm adds that event. SSL_read may leave
 * decrypted bytes inside OpenSSL that epoll cannot see: front_arm queues such
 * a connection on f->ready and the loop serves it without waiting.
 * Renegotiation is refused (TLS 1.2+, SSL_OP_NO_RENEGOTIATION), so a write
 * never needs to read.
 *
 * A first byte that is not a TLS handshake record (0x16) is plain HTTP sent
 * to the TLS port: it is answered in plain text, 400 with a JSON error that
 * says to use https://, instead of a handshake failure the client cannot
 * read.
 *
 * Threads: front_tls_open/reload/free run in the main thread; the front's
 * thread takes a reference to the current SSL_CTX for each new connection
 * (t->mu), so a reload never changes a connection already accepted. */
#include "front_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "jobvisor/log.h"

struct front_tls {
	pthread_mutex_t mu;
	SSL_CTX *ctx; /* the current one (mu); connections hold their own reference */
	char *cert, *key;
};

/* The first OpenSSL error as text, the root cause (and the queue emptied). */
static const char *ssl_reason(char *buf, size_t len)
{
	unsigned long e = ERR_peek_error();
	const char *r = e ? ERR_reason_error_string(e) : NULL;
	snprintf(buf, len, "%s", r ? r : "unknown error");
	ERR_clear_error();
	return buf;
}

/* Never ask for a pass phrase on the terminal: an encrypted key is an error. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
	(void)buf, (void)size, (void)rwflag, (void)u;
	return 0;
}

/* Readable, a regular file, and (for the key) not open to others. */
static int check_file(const char *opt, const char *path, bool secret, char *err, size_t errlen)
{
	struct stat st;
	FILE *fp = fopen(path, "r");
	if (!fp) {
		snprintf(err, errlen, "cannot read %s '%s': %s", opt, path, strerror(errno));
		return -1;
	}
	int rc = fstat(fileno(fp), &st);
	fclose(fp);
	if (rc < 0 || !S_ISREG(st.st_mode)) {
		snprintf(err, errlen, "cannot read %s '%s': not a regular file", opt, path);
		return -1;
	}
	if (secret && (st.st_mode & S_IRWXO)) {
		snprintf(err, errlen, "%s '%s' is open to others (mode %04o); chmod o-rwx it", opt, path,
		         (unsigned)(st.st_mode & 07777));
		return -1;
	}
	return 0;
}

/* A warning at load time for a certificate outside its validity period:
 * clients will refuse it, and the log says why first. */
static void warn_validity(SSL_CTX *ctx, const char *cert)
{
	X509 *x = SSL_CTX_get0_certificate(ctx);
	if (x && X509_cmp_current_time(X509_get0_notAfter(x)) < 0)
		jv_warn(NULL, NULL, "the certificate in --tls-cert '%s' has expired; clients will refuse it", cert);
	else if (x && X509_cmp_current_time(X509_get0_notBefore(x)) > 0)
		jv_warn(NULL, NULL, "the certificate in --tls-cert '%s' is not valid yet; clients will refuse it", cert);
}

/* A server context from the two files: TLS 1.2 and 1.3, forward-secret AEAD
 * suites only, stateless session tickets (no server-side cache to bound). */
static SSL_CTX *load_ctx(const char *cert, const char *key, char *err, size_t errlen)
{
	char why[160];
	if (check_file("--tls-cert", cert, false, err, errlen) < 0 || check_file("--tls-key", key, true, err, errlen) < 0)
		return NULL;
	ERR_clear_error();
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
	if (!ctx) {
		snprintf(err, errlen, "cannot set up TLS: %s", ssl_reason(why, sizeof(why)));
		return NULL;
	}
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_COMPRESSION |
	                             SSL_OP_IGNORE_UNEXPECTED_EOF);
	SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
	                          SSL_MODE_RELEASE_BUFFERS);
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	SSL_CTX_set_num_tickets(ctx, 1);
	SSL_CTX_set_default_passwd_cb(ctx, no_passphrase);
	if (SSL_CTX_set_cipher_list(ctx, "ECDHE+AESGCM:ECDHE+CHACHA20") != 1) {
		snprintf(err, errlen, "cannot set up TLS: %s", ssl_reason(why, sizeof(why)));
		goto fail;
	}
	if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
		ssl_reason(why, sizeof(why));
		if (strcmp(why, "no start line") == 0)
			snprintf(err, errlen, "--tls-cert '%s' holds no PEM certificate (no '-----BEGIN CERTIFICATE-----')",
			         cert);
		else
			snprintf(err, errlen, "--tls-cert '%s' holds no usable PEM certificate: %s", cert, why);
		goto fail;
	}
	if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
		ssl_reason(why, sizeof(why));
		if (strstr(why, "mismatch"))
			snprintf(err, errlen, "--tls-key '%s' does not match the certificate in --tls-cert '%s'", key, cert);
		else if (strcmp(why, "bad decrypt") == 0)
			snprintf(err, errlen, "--tls-key '%s' is encrypted; give the key without a pass phrase "
			         "(openssl pkey -in ENCRYPTED -out PLAIN)", key);
		else
			snprintf(err, errlen, "--tls-key '%s' holds no usable PEM private key: %s", key, why);
		goto fail;
	}
	if (SSL_CTX_check_private_key(ctx) != 1) {
		ERR_clear_error();
		snprintf(err, errlen, "--tls-key '%s' does not match the certificate in --tls-cert '%s'", key, cert);
		goto fail;
	}
	warn_validity(ctx, cert);
	return ctx;
fail:
	SSL_CTX_free(ctx);
	return NULL;
}

int front_tls_open(const char *cert, const char *key, struct front_tls **out, char *err, size_t errlen)
{
	*out = NULL;
	struct front_tls *t = calloc(1, sizeof(*t));
	if (!t) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	pthread_mutex_init(&t->mu, NULL);
	if (!(t->cert = strdup(cert)) || !(t->key = strdup(key))) {
		snprintf(err, errlen, "out of memory");
		front_tls_free(t);
		return -ENOMEM;
	}
	t->ctx = load_ctx(cert, key, err, errlen);
	if (!t->ctx) {
		front_tls_free(t);
		return -EINVAL;
	}
	*out = t;
	return 0;
}

int front_tls_reload(struct front_tls *t, char *err, size_t errlen)
{
	SSL_CTX *fresh = load_ctx(t->cert, t->key, err, errlen);
	if (!fresh)
		return -EINVAL;
	pthread_mutex_lock(&t->mu);
	SSL_CTX *old = t->ctx;
	t->ctx = fresh;
	pthread_mutex_unlock(&t->mu);
	SSL_CTX_free(old); /* connections made with it hold their own reference */
	return 0;
}

void front_tls_free(struct front_tls *t)
{
	if (!t)
		return;
	pthread_mutex_destroy(&t->mu);
	SSL_CTX_free(t->ctx);
	free(t->cert);
	free(t->key);
	free(t);
}

/* ---- one connection ---- */

int front_tls_attach(struct front *f, struct fconn *c)
{
	struct front_tls *t = f->cp->tls;
	if (!t)
		return 0;
	pthread_mutex_lock(&t->mu);
	c->ssl = SSL_new(t->ctx);
	pthread_mutex_unlock(&t->mu);
	if (!c->ssl || SSL_set_fd(c->ssl, c->cfd) != 1) {
		ERR_clear_error();
		return -ENOMEM;
	}
	SSL_set_accept_state(c->ssl);
	return 0;
}

void front_tls_detach(struct fconn *c)
{
	SSL_free(c->ssl);
	c->ssl = NULL;
}

bool front_tls_pending(const struct fconn *c)
{
	return c->ssl && SSL_pending(c->ssl) > 0;
}

/* Why a handshake failed, kept for the once-a-minute report. */
static void note_failure(struct front *f, struct fconn *c, int e)
{
	char why[96];
	if (e == SSL_ERROR_SYSCALL)
		snprintf(why, sizeof(why), "%s", errno ? strerror(errno) : "closed by the client");
	else
		ssl_reason(why, sizeof(why));
	f->tls_failed++;
	f->last_ip = c->ip;
	snprintf(f->tls_last_err, sizeof(f->tls_last_err), "%s", why);
}

int front_tls_handshake(struct front *f, struct fconn *c)
{
	if (!c->tls_peeked) {
		unsigned char first;
		ssize_t n = recv(c->cfd, &first, 1, MSG_PEEK);
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			return 0;
		if (n <= 0) {
			front_conn_close(f, c);
			return -1;
		}
		c->tls_peeked = true;
		if (first != 0x16) { /* not a TLS handshake record: plain HTTP, most likely */
			front_tls_detach(c);
			front_answer(f, c, 400, NULL, "this port speaks TLS: use https://");
			return -1;
		}
	}
	ERR_clear_error();
	int rc = SSL_accept(c->ssl);
	if (rc == 1) {
		c->tls_up = true;
		c->tls_want = 0;
		return 1;
	}
	int e = SSL_get_error(c->ssl, rc);
	if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
		c->tls_want = e == SSL_ERROR_WANT_WRITE ? EPOLLOUT : 0;
		if (front_arm(f, c) < 0) {
			front_conn_close(f, c);
			return -1;
		}
		return 0;
	}
	note_failure(f, c, e);
	front_conn_close(f, c); /* OpenSSL has sent its alert if the socket took it */
	return -1;
}

ssize_t front_cread(struct fconn *c, void *buf, size_t len)
{
	if (!c->ssl) {
		ssize_t n = recv(c->cfd, buf, len, 0);
		return n >= 0 ? n : errno == EINTR ? -EAGAIN : -errno;
	}
	ERR_clear_error();
	int n = SSL_read(c->ssl, buf, len > INT32_MAX ? INT32_MAX : (int)len);
	c->tls_want = 0;
	if (n > 0)
		return n;
	int e = SSL_get_error(c->ssl, n);
	if (e == SSL_ERROR_WANT_READ)
		return -EAGAIN;
	if (e == SSL_ERROR_WANT_WRITE) {
		c->tls_want = EPOLLOUT;
		return -EAGAIN;
	}
	if (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && errno == 0))
		return 0;
	ERR_clear_error();
	return -EPROTO;
}

ssize_t front_cwrite(struct fconn *c, const void *buf, size_t len)
{
	if (!c->ssl) {
		ssize_t n = send(c->cfd, buf, len, MSG_NOSIGNAL);
		return n >= 0 ? n : errno == EINTR ? -EAGAIN : -errno;
	}
	/* Partial writes: each SSL_write takes at most a record; a write that
	 * waits is retried later from the same bytes (out_off moves only on
	 * success), as OpenSSL requires. */
	size_t done = 0;
	while (done < len) {
		ERR_clear_error();
		size_t left = len - done;
		int n = SSL_write(c->ssl, (const char *)buf + done, left > INT32_MAX ? INT32_MAX : (int)left);
		if (n > 0) {
			done += (size_t)n;
			continue;
		}
		int e = SSL_get_error(c->ssl, n);
		if (e == SSL_ERROR_WANT_WRITE)
			break;
		ERR_clear_error();
		return done ? (ssize_t)done : -EPROTO; /* WANT_READ would be a renegotiation: refused */
	}
	return done ? (ssize_t)done : -EAGAIN;
}

void front_cshutdown(struct fconn *c)
{
	if (c->ssl) {
		ERR_clear_error();
		if (SSL_shutdown(c->ssl) < 0) /* our close_notify; the client's is not awaited */
			ERR_clear_error();
	}
	shutdown(c->cfd, SHUT_WR);
}
