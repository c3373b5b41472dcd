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
 * subjectAltName here, which mbedtls 2.28 does not check). The chain is
 * verified once the handshake is done and before any byte of the request
 * goes out (mbedtls's "optional" mode, then mbedtls_x509_crt_verify here)
 * against only the CA certificates that can matter: the bundle is read one
 * certificate at a time and only those whose subject issued a certificate of
 * the peer's chain are kept. Parsing the whole system bundle would cost about
 * 0.5 MiB of heap that glibc cannot hand back (its per-thread caches pin the
 * pages); connections are kept alive, so this runs rarely. */
#include "transport_internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

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
	mbedtls_entropy_context entropy;
	mbedtls_ctr_drbg_context drbg;
	mbedtls_ssl_config conf;
};

struct tp_tls {
	struct tp_tls_conf *c;
	int fd;
	char host[256];
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
	mbedtls_ssl_conf_authmode(&c->conf, insecure ? MBEDTLS_SSL_VERIFY_NONE : MBEDTLS_SSL_VERIFY_OPTIONAL);
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
	free(c->ca_file);
	free(c);
}

/* Does cand (a CA certificate) name itself as the issuer of a certificate in chain? */
static bool issues_one_of(const mbedtls_x509_crt *cand, const mbedtls_x509_crt *chain)
{
	for (const mbedtls_x509_crt *p = chain; p && p->version; p = p->next)
		if (p->issuer_raw.len == cand->subject_raw.len &&
		    memcmp(p->issuer_raw.p, cand->subject_raw.p, cand->subject_raw.len) == 0)
			return true;
	return false;
}

/* Add to trust the PEM certificates of text[0..len) that issued one of chain. */
static void pick_issuers(const char *text, size_t len, const mbedtls_x509_crt *chain,
                         mbedtls_x509_crt *trust)
{
	static const char begin[] = "-----BEGIN CERTIFICATE-----", endm[] = "-----END CERTIFICATE-----";
	const char *p = text, *end = text + len;
	while ((p = memmem(p, (size_t)(end - p), begin, sizeof(begin) - 1))) {
		const char *e = memmem(p, (size_t)(end - p), endm, sizeof(endm) - 1);
		if (!e)
			return;
		size_t n = (size_t)(e - p) + sizeof(endm) - 1;
		char *pem = malloc(n + 1);
		if (!pem)
			return;
		memcpy(pem, p, n);
		pem[n] = '\0';
		mbedtls_x509_crt one;
		mbedtls_x509_crt_init(&one);
		if (mbedtls_x509_crt_parse(&one, (const unsigned char *)pem, n + 1) == 0 &&
		    issues_one_of(&one, chain))
			mbedtls_x509_crt_parse_der(trust, one.raw.p, one.raw.len);
		mbedtls_x509_crt_free(&one);
		free(pem);
		p += n;
	}
}

/* The trust anchors for chain from path (PEM; a DER file is parsed whole). */
static int load_trust(const char *path, const mbedtls_x509_crt *chain, mbedtls_x509_crt *trust)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	struct stat st;
	void *m = MAP_FAILED;
	if (fstat(fd, &st) == 0 && st.st_size > 0)
		m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	int e = errno;
	close(fd);
	if (m == MAP_FAILED)
		return st.st_size == 0 ? -ENODATA : -e;
	if (memmem(m, (size_t)st.st_size, "-----BEGIN", 10))
		pick_issuers(m, (size_t)st.st_size, chain, trust);
	else
		mbedtls_x509_crt_parse_der(trust, m, (size_t)st.st_size);
	munmap(m, (size_t)st.st_size);
	return 0;
}

static int verify_chain(struct tp_tls *t, const mbedtls_x509_crt *chain, char *err, size_t errlen)
{
	mbedtls_x509_crt trust;
	mbedtls_x509_crt_init(&trust);
	const char *from = t->c->ca_file;
	int rc = from ? load_trust(from, chain, &trust) : -ENOENT;
	for (size_t i = 0; !from && i < JV_ARRAY_LEN(system_bundles) && rc == -ENOENT; i++)
		rc = load_trust(system_bundles[i], chain, &trust);
	if (rc) {
		snprintf(err, errlen, "cannot read CA certificates from %s: %s",
		         from ? from : "the system store", strerror(-rc));
		mbedtls_x509_crt_free(&trust);
		return -EIO;
	}
	uint32_t flags = 0;
	int ret = mbedtls_x509_crt_verify((mbedtls_x509_crt *)chain, &trust, NULL,
	                                  t->iplen ? NULL : t->host, &flags, NULL, NULL);
	mbedtls_x509_crt_free(&trust);
	if (ret || flags) {
		char m[200] = "no trusted CA issued it";
		if (flags)
			mbedtls_x509_crt_verify_info(m, sizeof(m), "", flags);
		m[strcspn(m, "\n")] = '\0';
		snprintf(err, errlen, "TLS certificate verification failed: %s", m);
		return -EPERM;
	}
	return 0;
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
	snprintf(t->host, sizeof(t->host), "%s", host);
	if (inet_pton(AF_INET, host, t->ip) == 1)
		t->iplen = 4;
	else if (inet_pton(AF_INET6, host, t->ip) == 1)
		t->iplen = 16;
	int rc = 0;
	int ret = mbedtls_ssl_setup(&t->ssl, &c->conf);
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
	const mbedtls_x509_crt *crt = mbedtls_ssl_get_peer_cert(&t->ssl);
	if (!crt) {
		snprintf(err, errlen, "TLS certificate verification failed: the server sent no certificate");
		return -EPERM;
	}
	int rc = verify_chain(t, crt, err, errlen);
	if (rc)
		return rc;
	if (t->iplen && !cert_has_ip(crt, t->ip, t->iplen)) {
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
