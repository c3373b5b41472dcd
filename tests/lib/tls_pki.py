"""tls_pki — a throwaway CA and server certificates for 127.0.0.1, made with the `openssl`
command in a directory the caller owns (tests and benchmarks of jobvisor-cp's --tls-cert).

Pki(dir) makes an ECDSA P-256 CA; server(name) a certificate it signs for 127.0.0.1 and
localhost (ECDSA P-256, or RSA-2048 with rsa=True), with the extensions strict verifiers
want; context() an ssl.SSLContext that trusts the CA; read_to_close() everything until the close; read_answer() one answer (Content-Length, kept connections).
OPENSSL is None when the command is missing (callers skip)."""
import os
import re
import shutil
import ssl
import subprocess

OPENSSL = shutil.which("openssl")

CA_EXT = "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\n"
SERVER_EXT = ("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
              "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
              "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")


def openssl(*args, cwd):
    p = subprocess.run([OPENSSL, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        raise AssertionError("openssl %s failed:\n%s" % (" ".join(args), p.stderr))


class Pki:
    """A CA (P-256) in dir, and server certificates it signs for 127.0.0.1."""

    def __init__(self, dir):
        self.dir = dir
        with open(os.path.join(dir, "ca.ext"), "w") as f:
            f.write(CA_EXT)
        with open(os.path.join(dir, "server.ext"), "w") as f:
            f.write(SERVER_EXT)
        self._key("ca.key")
        openssl("req", "-new", "-key", "ca.key", "-subj", "/CN=jobvisor test CA", "-out", "ca.csr", cwd=dir)
        openssl("x509", "-req", "-in", "ca.csr", "-signkey", "ca.key", "-days", "2", "-extfile", "ca.ext",
                "-out", "ca.pem", cwd=dir)
        self.ca = os.path.join(dir, "ca.pem")

    def _key(self, name, rsa=False):
        kind = ["RSA", "-pkeyopt", "rsa_keygen_bits:2048"] if rsa else ["EC", "-pkeyopt", "ec_paramgen_curve:P-256"]
        openssl("genpkey", "-algorithm", *kind, "-out", name, cwd=self.dir)
        os.chmod(os.path.join(self.dir, name), 0o600)
        return os.path.join(self.dir, name)

    def server(self, name, rsa=False):
        """(certificate path, key path) for 127.0.0.1, signed by the CA."""
        key = self._key(name + ".key", rsa)
        openssl("req", "-new", "-key", key, "-subj", "/CN=127.0.0.1", "-out", name + ".csr", cwd=self.dir)
        openssl("x509", "-req", "-in", name + ".csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "2", "-extfile", "server.ext", "-out", name + ".pem", cwd=self.dir)
        return os.path.join(self.dir, name + ".pem"), key

    def context(self):
        return ssl.create_default_context(cafile=self.ca)


def der_of(path):
    with open(path) as f:
        return ssl.PEM_cert_to_DER_cert(f.read())


def answer_complete(data):
    """True when data holds a whole HTTP answer framed by Content-Length (after
    any 100 Continue): a kept-alive connection does not close after it."""
    while True:
        head, sep, body = data.partition(b"\r\n\r\n")
        if not sep:
            return False
        if not head.startswith(b"HTTP/1.1 100"):
            break
        data = body
    m = re.search(rb"\r\ncontent-length: *(\d+)", head, re.I)
    return bool(m) and len(body) >= int(m.group(1))


def read_answer(sock, timeout=30):
    """Every byte of one answer: until it is complete (Content-Length) or the
    server closes (a TLS close_notify or a plain EOF)."""
    sock.settimeout(timeout)
    data = b""
    while not answer_complete(data):
        try:
            chunk = sock.recv(65536)
        except ssl.SSLZeroReturnError:
            break
        if not chunk:
            break
        data += chunk
    return data


def read_to_close(sock, timeout=30):
    """Every byte the server sends until it closes (a TLS close_notify or a plain EOF)."""
    sock.settimeout(timeout)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ssl.SSLZeroReturnError:
            break
        if not chunk:
            return data
        data += chunk
    return data


def start_tls_cp(test, args=()):
    """A real jobvisor-cp serving https with a certificate of a new test PKI
    (test.pki, under test.tmp), its client context set; closed at cleanup."""
    from cp_harness import ControlPlane
    test.pki = Pki(test.tmp)
    cert, key = test.pki.server("server")
    cp = ControlPlane(["--tls-cert", cert, "--tls-key", key] + list(args))
    cp.ssl_context = test.pki.context()
    cp.start()
    test.addCleanup(cp.close)  # after tearDown has stopped the agent
    return cp
