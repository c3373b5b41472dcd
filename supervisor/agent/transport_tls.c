/* transport_tls.c — TLS to the control plane over mbedtls.
 *
 * mbedtls replaced libcurl (and with it libcrypto, GnuTLS, Kerberos...) in the
 * agent because the idle agent's resident memory is most of what it costs a
 * host (docs/performance.md, "Idle agent memory"). It is linked statically:
 * its code pages are touched only when an https URL is used.
 *
 * Verification is the same as before: the peer's chain against tls_ca_file or
 * the system bundle, and the URL's host against the certificate (DNS names
 * through mbedtls; IP addresses against the iPAddress entries of
 * subjectAltName here, which mbedtls 2.28 does not check). The parsed CA
 * bundle (a few hundred KiB of heap for the system store) is only kept while
 * a handshake runs: connections are kept alive, so handshakes are rare. */
#include "transport_internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <malloc.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <mbedtls/asn1.h>
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/oid.h>
#include <mbedtls/ssl.h>
#include <mbedtls/x509_crt.h>

/* Debian's bundle first, then other distributions' (as libcurl's build looks). */
static const char *const system_bundles[] = {
	"/etc/ssl/certs/ca-certificates.crt",
	"/etc/pki/tls/certs/ca-bundle.crt",
	"/etc/ssl/ca-bundle.pem",
	"/etc/ssl/cert.pem",
};

struct tp_tls_conf {
	int refs;
	char *ca_file;
	bool insecure;
	int handshakes; /* running now: the CA certificates are parsed while > 0 */
	bool ca_loaded;
	mbedtls_x509_crt ca;
	mbedtls_entropy_context entropy;
	mbedtls_ctr_drbg_context drbg;
	mbedtls_ssl_config conf;
};

struct tp_tls {
	struct tp_tls_conf *c;
	int fd;
	bool handshaking;
	int sys_errno; /* of the last failed send or recv */
	unsigned char ip[16];
	size_t iplen; /* the URL's host is this address (0: a name) */
	mbedtls_ssl_context ssl;
};

static void mbed_error(int ret, const char *what, char *err, size_t errlen)
{
	char m[160];
	mbedtls_strerror(ret, m, sizeof(m));
	snprintf(err, errlen, "%s: %s", what, m);
}

int tp_tls_conf_new(const char *ca_file, bool insecure, struct tp_tls_conf **out)
{
	*out = NULL;
	struct tp_tls_conf *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->refs = 1;
	c->insecure = insecure;
	mbedtls_x509_crt_init(&c->ca);
	mbedtls_entropy_init(&c->entropy);
	mbedtls_ctr_drbg_init(&c->drbg);
	mbedtls_ssl_config_init(&c->conf);
	static const unsigned char pers[] = "jobvisor agent";
	if ((ca_file && !(c->ca_file = strdup(ca_file))) ||
	    mbedtls_ctr_drbg_seed(&c->drbg, mbedtls_entropy_func, &c->entropy, pers, sizeof(pers)) ||
	    mbedtls_ssl_config_defaults(&c->conf, MBEDTLS_SSL_IS_CLIENT, MBEDTLS_SSL_TRANSPORT_STREAM,
	                                MBEDTLS_SSL_PRESET_DEFAULT)) {
		tp_tls_conf_put(c);
		return -ENOMEM;
	}
	mbedtls_ssl_conf_rng(&c->conf, mbedtls_ctr_drbg_random, &c->drbg);
	mbedtls_ssl_conf_authmode(&c->conf, insecure ? MBEDTLS_SSL_VERIFY_NONE : MBEDTLS_SSL_VERIFY_REQUIRED);
	mbedtls_ssl_conf_min_version(&c->conf, MBEDTLS_SSL_MAJOR_VERSION_3, MBEDTLS_SSL_MINOR_VERSION_3);
	*out = c;
	return 0;
}

void tp_tls_conf_put(struct tp_tls_conf *c)
{
	if (!c || --c->refs > 0)
		return;
	mbedtls_ssl_config_free(&c->conf);
	mbedtls_ctr_drbg_free(&c->drbg);
	mbedtls_entropy_free(&c->entropy);
	mbedtls_x509_crt_free(&c->ca);
	free(c->ca_file);
	free(c);
}

static int load_ca(struct tp_tls_conf *c, char *err, size_t errlen)
{
	if (c->insecure || c->ca_loaded)
		return 0;
	int ret = -1;
	const char *from = c->ca_file;
	if (from) {
		ret = mbedtls_x509_crt_parse_file(&c->ca, from);
	} else {
		for (size_t i = 0; i < JV_ARRAY_LEN(system_bundles) && ret != 0; i++) {
			from = system_bundles[i];
			ret = mbedtls_x509_crt_parse_file(&c->ca, from);
			if (ret > 0) /* some certificates of the bundle did not parse: use the rest */
				ret = 0;
		}
		if (ret != 0)
			from = "the system store";
	}
	if (ret < 0 || c->ca.version == 0) {
		char what[300];
		snprintf(what, sizeof(what), "cannot load CA certificates from %s", from);
		mbed_error(ret < 0 ? ret : MBEDTLS_ERR_X509_INVALID_FORMAT, what, err, errlen);
		mbedtls_x509_crt_free(&c->ca);
		mbedtls_x509_crt_init(&c->ca);
		return -EIO;
	}
	mbedtls_ssl_conf_ca_chain(&c->conf, &c->ca, NULL);
	c->ca_loaded = true;
	return 0;
}

static void handshake_over(struct tp_tls *t)
{
	if (!t->handshaking)
		return;
	t->handshaking = false;
	struct tp_tls_conf *c = t->c;
	if (--c->handshakes > 0 || !c->ca_loaded)
		return;
	mbedtls_ssl_conf_ca_chain(&c->conf, NULL, NULL);
	mbedtls_x509_crt_free(&c->ca);
	mbedtls_x509_crt_init(&c->ca);
	c->ca_loaded = false;
	malloc_trim(0); /* hand the bundle's pages back */
}

static int bio_send(void *ctx, const unsigned char *buf, size_t len)
{
	struct tp_tls *t = ctx;
	ssize_t n = send(t->fd, buf, len, MSG_NOSIGNAL);
	if (n >= 0)
		return (int)n;
	if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
		return MBEDTLS_ERR_SSL_WANT_WRITE;
	t->sys_errno = errno;
	return MBEDTLS_ERR_SSL_INTERNAL_ERROR;
}

static int bio_recv(void *ctx, unsigned char *buf, size_t len)
{
	struct tp_tls *t = ctx;
	ssize_t n = recv(t->fd, buf, len, 0);
	if (n >= 0)
		return (int)n;
	if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
		return MBEDTLS_ERR_SSL_WANT_READ;
	t->sys_errno = errno;
	return MBEDTLS_ERR_SSL_INTERNAL_ERROR;
}

int tp_tls_new(struct tp_tls_conf *c, int fd, const char *host, struct tp_tls **out, char *err,
               size_t errlen)
{
	*out = NULL;
	struct tp_tls *t = calloc(1, sizeof(*t));
	if (!t) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	t->c = c;
	c->refs++;
	t->fd = fd;
	mbedtls_ssl_init(&t->ssl);
	t->handshaking = true;
	c->handshakes++;
	if (inet_pton(AF_INET, host, t->ip) == 1)
		t->iplen = 4;
	else if (inet_pton(AF_INET6, host, t->ip) == 1)
		t->iplen = 16;
	int rc = load_ca(c, err, errlen);
	int ret = rc ? 0 : mbedtls_ssl_setup(&t->ssl, &c->conf);
	/* The name goes out as SNI and is checked against the certificate; an
	 * address is checked after the handshake (check_ip). */
	if (!rc && !ret && !t->iplen)
		ret = mbedtls_ssl_set_hostname(&t->ssl, host);
	if (!rc && ret) {
		mbed_error(ret, "TLS setup failed", err, errlen);
		rc = -ENOMEM;
	}
	if (rc) {
		tp_tls_free(t);
		return rc;
	}
	mbedtls_ssl_set_bio(&t->ssl, t, bio_send, bio_recv, NULL);
	*out = t;
	return 0;
}

void tp_tls_free(struct tp_tls *t)
{
	if (!t)
		return;
	handshake_over(t);
	mbedtls_ssl_free(&t->ssl);
	tp_tls_conf_put(t->c);
	free(t);
}

/* Is the address among the certificate's subjectAltName iPAddress entries? */
static bool cert_has_ip(const mbedtls_x509_crt *crt, const unsigned char *ip, size_t iplen)
{
	unsigned char *p = crt->v3_ext.p, *end = p + crt->v3_ext.len;
	size_t len;
	if (!p || mbedtls_asn1_get_tag(&p, end, &len, MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE))
		return false;
	while (p < end) {
		unsigned char *ext_end;
		mbedtls_x509_buf oid;
		int bool_val = 0;
		if (mbedtls_asn1_get_tag(&p, end, &len, MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE))
			return false;
		ext_end = p + len;
		if (mbedtls_asn1_get_tag(&p, ext_end, &oid.len, MBEDTLS_ASN1_OID))
			return false;
		oid.p = p;
		p += oid.len;
		mbedtls_asn1_get_bool(&p, ext_end, &bool_val); /* critical, optional */
		if (mbedtls_asn1_get_tag(&p, ext_end, &len, MBEDTLS_ASN1_OCTET_STRING))
			return false;
		if (MBEDTLS_OID_CMP(MBEDTLS_OID_SUBJECT_ALT_NAME, &oid) == 0) {
			unsigned char *q = p, *qend = p + len;
			size_t n;
			if (mbedtls_asn1_get_tag(&q, qend, &n, MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE))
				return false;
			while (q < qend) {
				unsigned char tag = *q++;
				if (mbedtls_asn1_get_len(&q, qend, &n))
					return false;
				if (tag == (MBEDTLS_ASN1_CONTEXT_SPECIFIC | 7) && n == iplen &&
				    memcmp(q, ip, iplen) == 0)
					return true;
				q += n;
			}
		}
		p = ext_end;
	}
	return false;
}

static int check_peer(struct tp_tls *t, char *err, size_t errlen)
{
	if (t->c->insecure)
		return 0;
	uint32_t flags = mbedtls_ssl_get_verify_result(&t->ssl);
	if (flags) {
		char m[200];
		mbedtls_x509_crt_verify_info(m, sizeof(m), "", flags);
		m[strcspn(m, "\n")] = '\0';
		snprintf(err, errlen, "TLS certificate verification failed: %s", m);
		return -EPERM;
	}
	const mbedtls_x509_crt *crt = mbedtls_ssl_get_peer_cert(&t->ssl);
	if (t->iplen && (!crt || !cert_has_ip(crt, t->ip, t->iplen))) {
		snprintf(err, errlen, "TLS certificate verification failed: the certificate is not "
		         "valid for the URL's address (no matching subjectAltName IP entry)");
		return -EPERM;
	}
	return 0;
}

static int io_error(struct tp_tls *t, int ret, const char *what, char *err, size_t errlen)
{
	if (ret == MBEDTLS_ERR_SSL_INTERNAL_ERROR && t->sys_errno)
		snprintf(err, errlen, "%s: %s", what, strerror(t->sys_errno));
	else if (ret == MBEDTLS_ERR_X509_CERT_VERIFY_FAILED)
		return check_peer(t, err, errlen);
	else
		mbed_error(ret, what, err, errlen);
	return -EIO;
}

int tp_tls_handshake(struct tp_tls *t, short *want, char *err, size_t errlen)
{
	int ret = mbedtls_ssl_handshake(&t->ssl);
	if (ret == MBEDTLS_ERR_SSL_WANT_READ || ret == MBEDTLS_ERR_SSL_WANT_WRITE) {
		*want = ret == MBEDTLS_ERR_SSL_WANT_READ ? POLLIN : POLLOUT;
		return -EAGAIN;
	}
	handshake_over(t);
	if (ret) {
		int rc = io_error(t, ret, "TLS handshake failed", err, errlen);
		return rc ? rc : -EIO;
	}
	return check_peer(t, err, errlen);
}

ssize_t tp_tls_io(struct tp_tls *t, bool writing, void *buf, size_t len, short *want, char *err,
                  size_t errlen)
{
	int ret = writing ? mbedtls_ssl_write(&t->ssl, buf, len) : mbedtls_ssl_read(&t->ssl, buf, len);
	if (ret >= 0)
		return ret;
	if (ret == MBEDTLS_ERR_SSL_WANT_READ || ret == MBEDTLS_ERR_SSL_WANT_WRITE) {
		*want = ret == MBEDTLS_ERR_SSL_WANT_READ ? POLLIN : POLLOUT;
		return -EAGAIN;
	}
	if (!writing && (ret == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY || ret == MBEDTLS_ERR_SSL_CONN_EOF))
		return 0;
	return io_error(t, ret, writing ? "TLS send failed" : "TLS receive failed", err, errlen);
}
