"""A TCP proxy on 127.0.0.1 (OS-assigned port) in front of a real server, for network faults:
stall_next() makes the next connection(s) accept the client's bytes and then go silent (nothing
forwarded either way, the socket left open), the way a dead NAT mapping or a hung peer looks;
corrupt_next() flips one byte of the next part upload's body on its way to the server;
answer_as_sse_kms() makes whole-object PUT answers look like an SSE-KMS bucket's.

It also counts what passes, to assert at the wire what a client asked for and got: every HTTP
request the client sent (method, path, Range header) with the number of bytes the server sent
back before the client's next request on that connection (the response; curl does not
pipeline). down_rate (bytes/s) paces the server's answers, so a download lasts long enough to
be interrupted at a chosen point."""
import hashlib
import re
import select
import socket
import threading
import time


class Request:
    def __init__(self, method, path, headers):
        self.method = method
        self.path = path
        self.headers = headers
        self.served = 0  # bytes of the response (status line, headers and body)
        self.answer_seen = False  # the head of the answer went by (answer_as_sse_kms)

    @property
    def range_start(self):
        """The first byte of a `Range: bytes=N-[M]` request, None without a Range header."""
        r = self.headers.get("range")
        if r is None:
            return None
        return int(r.split("=", 1)[1].split("-", 1)[0])

    def __repr__(self):
        return f"<{self.method} {self.path} range={self.headers.get('range')} served={self.served}>"


class _Conn:
    """Splits the client's byte stream into requests (headers, then Content-Length bytes)."""
    def __init__(self, proxy):
        self.proxy = proxy
        self.buf = b""
        self.skip = 0
        self.current = None
        self.corrupt_at = None  # body offset of the byte to flip in the current request
        self.pending = b""  # the head of an answer being rewritten, not yet whole

    def from_client(self, data):
        """The bytes to forward: data, with one body byte flipped when corrupt_next() asked."""
        out = bytearray(data)
        i = 0
        while i < len(data):
            if self.skip:
                n = min(self.skip, len(data) - i)
                if self.corrupt_at is not None and self.corrupt_at < n:
                    out[i + self.corrupt_at] ^= 0xFF
                    self.corrupt_at = None
                elif self.corrupt_at is not None:
                    self.corrupt_at -= n
                self.skip -= n
                i += n
                continue
            self.buf += data[i:]
            i = len(data)
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return bytes(out)
            head, rest = self.buf[:end].decode("latin-1"), self.buf[end + 4:]
            self.buf = b""
            lines = head.split("\r\n")
            method, path = lines[0].split(" ")[:2]
            headers = {}
            for line in lines[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            self.skip = int(headers.get("content-length", "0"))
            self.current = Request(method, path, headers)
            with self.proxy.lock:
                self.proxy.requests.append(self.current)
                if self.proxy.corrupts and method == "PUT" and "partNumber=" in path and self.skip:
                    self.proxy.corrupts -= 1
                    self.corrupt_at = min(1000, self.skip - 1)
            i = len(data) - len(rest)
        return bytes(out)

    def answer(self, data):
        """The server's bytes to forward: for a whole-object PUT while answer_as_sse_kms() is on,
        the answer says SSE-KMS and carries an ETag that is no MD5 of the body, as S3 does."""
        q = self.current
        if not (self.proxy.sse_kms and q is not None and q.method == "PUT" and "partNumber=" not in q.path
                and not q.answer_seen):
            return data
        self.pending += data  # the answer's head may come in pieces: hold it until whole
        out = b""
        while self.pending.startswith(b"HTTP/1.1 1") and b"\r\n\r\n" in self.pending:
            end = self.pending.find(b"\r\n\r\n") + 4  # an interim answer (100 Continue) goes by
            out, self.pending = out + self.pending[:end], self.pending[end:]
        head_end = self.pending.find(b"\r\n\r\n")
        if head_end < 0:
            return out
        data, self.pending, q.answer_seen = self.pending, b"", True
        m = re.search(rb'(?im)^etag: *"?([0-9a-f]{32})"?\r$', data[:head_end + 2])
        if not m:
            return out + data
        fake = hashlib.md5(b"kms" + m.group(1)).hexdigest().encode()
        with self.proxy.lock:
            self.proxy.sse_rewritten += 1
        return out + (data[:m.start()] + b'ETag: "' + fake + b'"\r\nx-amz-server-side-encryption: aws:kms'
                + data[m.end() - 1:])

    def from_server(self, n):
        if self.current is not None:
            with self.proxy.lock:
                self.current.served += n


class TcpProxy:
    def __init__(self, target_port, down_rate=None):
        self.target = ("127.0.0.1", target_port)
        self.down_rate = down_rate
        self.requests = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.stalls = 0
        self.stalled = 0
        self.corrupts = 0
        self.sse_kms = False
        self.sse_rewritten = 0
        self.lock = threading.Lock()
        self.closing = False
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.port}"

    def stall_next(self, n=1):
        with self.lock:
            self.stalls = n

    def corrupt_next(self, n=1):
        """Flip one byte in the body of the next n multipart part uploads (PUT ...partNumber=)."""
        with self.lock:
            self.corrupts = n

    def answer_as_sse_kms(self, on=True):
        """Answer whole-object PUTs as an SSE-KMS bucket does: x-amz-server-side-encryption:
        aws:kms and an ETag that is not the MD5 of the object."""
        with self.lock:
            self.sse_kms = on

    def _accept(self):
        while not self.closing:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                stall = self.stalls > 0
                if stall:
                    self.stalls -= 1
                    self.stalled += 1
                self.conns.append(c)
            threading.Thread(target=self._pipe, args=(c, stall), daemon=True).start()

    def _pipe(self, c, stall):
        if stall:
            # read and drop what the client sends; never answer
            while not self.closing:
                r, _, _ = select.select([c], [], [], 0.5)
                if r:
                    try:
                        if not c.recv(65536):
                            break
                    except OSError:
                        break
            c.close()
            return
        try:
            u = socket.create_connection(self.target)
        except OSError:
            c.close()
            return
        with self.lock:
            self.conns.append(u)
        socks = [c, u]
        conn = _Conn(self)
        t0, down = time.monotonic(), 0
        try:
            while not self.closing:
                r, _, _ = select.select(socks, [], [], 0.5)
                for s in r:
                    data = s.recv(16384 if self.down_rate else 65536)
                    if not data:
                        return
                    if s is c:
                        u.sendall(conn.from_client(data))
                        continue
                    c.sendall(conn.answer(data))
                    conn.from_server(len(data))
                    down += len(data)
                    if self.down_rate:
                        ahead = down / self.down_rate - (time.monotonic() - t0)
                        if ahead > 0:
                            time.sleep(ahead)
        except OSError:
            pass
        finally:
            c.close()
            u.close()

    def close(self):
        self.closing = True
        self.sock.close()
        with self.lock:
            for s in self.conns:
                try:
                    s.close()
                except OSError:
                    pass
