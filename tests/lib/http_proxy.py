"""HttpProxy: a forward HTTP proxy on 127.0.0.1, as an egress proxy in front of the agent.

Absolute-form requests (`POST http://host:port/path HTTP/1.1`) are rewritten to origin form and
sent to host:port on one upstream connection per client connection, answers relayed back as
they come; `CONNECT host:port` opens a tunnel (connect, answer 200, relay bytes both ways).
`auth` (e.g. "Basic dTpw") makes it answer 407 to requests without that Proxy-Authorization.
Every request head it receives is kept in `requests` as (method, target, headers with lower-case
names). stop() closes the listening socket and every connection (a proxy that is down);
start(port) listens again, on the same port if asked."""
import socket
import threading


def _read_head(f):
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        line = f.readline()
        if not line:
            return None
        head += line
    return head


def _pump(src, dst):
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    for s in (src, dst):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class HttpProxy:
    def __init__(self, auth=None):
        self.auth = auth
        self.requests = []
        self.port = None
        self._lsock = None
        self._socks = []
        self._lock = threading.Lock()

    def start(self, port=0):
        self._lsock = socket.create_server(("127.0.0.1", port))
        self.port = self._lsock.getsockname()[1]
        threading.Thread(target=self._serve, args=(self._lsock,), daemon=True).start()
        return self

    def url(self, userinfo=None):
        return "http://%s127.0.0.1:%d" % (userinfo + "@" if userinfo else "", self.port)

    def stop(self):
        with self._lock:
            socks, self._socks = self._socks + [self._lsock], []
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def methods(self):
        return [m for m, _, _ in self.requests]

    def _serve(self, lsock):
        while True:
            try:
                conn, _ = lsock.accept()
            except OSError:
                return
            with self._lock:
                self._socks.append(conn)
            threading.Thread(target=self._client, args=(conn,), daemon=True).start()

    def _upstream(self, hostport, conn):
        host, port = hostport.rsplit(b":", 1)
        back = socket.create_connection((host.decode().strip("[]"), int(port)))
        with self._lock:
            self._socks.append(back)
        threading.Thread(target=_pump, args=(back, conn), daemon=True).start()
        return back

    def _client(self, conn):
        f, back = conn.makefile("rb"), None
        try:
            while (head := _read_head(f)) is not None:
                lines = head.decode("latin-1").split("\r\n")
                method, target, version = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
                self.requests.append((method, target, headers))
                body = f.read(int(headers.get("content-length", 0)))
                if self.auth and headers.get("proxy-authorization") != self.auth:
                    conn.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                                 b"Proxy-Authenticate: Basic realm=\"egress\"\r\nContent-Length: 0\r\n\r\n")
                    continue
                if method == "CONNECT":
                    back = self._upstream(target.encode(), conn)
                    conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    _pump(conn, back)  # the client sends nothing before the 200: f holds no bytes
                    return
                hostport, _, path = target[len("http://"):].partition("/")
                if back is None:
                    back = self._upstream(hostport.encode(), conn)
                kept = "".join(ln + "\r\n" for ln in lines[1:] if ln and not ln.lower().startswith("proxy-"))
                back.sendall(("%s /%s %s\r\n%s\r\n" % (method, path, version, kept)).encode("latin-1") + body)
        except OSError:
            pass
        finally:
            conn.close()
