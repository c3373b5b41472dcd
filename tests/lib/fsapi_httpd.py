#!/usr/bin/env python3
"""A misbehaving HTTP server for the download tests (stdlib only).

Listens on 127.0.0.1 with an OS-assigned port and prints "PORT <n>" on the
first line of stdout. Content is generated, so any size costs no disk:
byte i of /blob/<name>?size=N is (i % 251) (pattern_bytes() in Python,
the same formula in the C tests). Routes:

  /blob/<name>?size=N           200, or 206 for "Range: bytes=S-" (Content-Range)
  /norange/<name>?size=N        ignores Range, always the whole body (200)
  /static/<path>                a file under --root, sendfile() + Range (benchmarks)
  /status/<code>                that status with a short body
  /flaky/<key>?size=N&fails=K   the first K requests for key answer 500, then the blob
  /truncate/<key>?size=N&times=K the first K requests for key send half the body and close
  /stall/<name>?size=N          headers and half the body, then silence (until the client gives up)
  /redirect?to=URL              302 to URL (file://, ftp://, ...)
  /chain/<n>?size=N             n redirects, then the blob
  /json?bytes=N                 a JSON document of about N bytes
  /count/<key>                  how many requests key has seen (text)

--tls CERT KEY serves HTTPS instead (the TLS verification tests).
"""
import argparse
import json
import os
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

PERIOD = 251
CHUNK = bytes(i % PERIOD for i in range(PERIOD)) * 4096  # ~1 MiB, a whole number of periods


def pattern_bytes(start, length):
    """Bytes [start, start+length) of the generated content."""
    out = bytearray()
    pos = start
    while length > 0:
        off = pos % PERIOD
        take = min(length, len(CHUNK) - off)
        out += CHUNK[off:off + take]
        pos += take
        length -= take
    return bytes(out)


class State:
    def __init__(self, root):
        self.root = root
        self.lock = threading.Lock()
        self.counts = {}

    def hit(self, key):
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + 1
            return self.counts[key]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fsapi-httpd"

    def log_message(self, fmt, *args):  # quiet
        pass

    def q(self, name, default=None, conv=int):
        v = self.query.get(name)
        return conv(v[0]) if v else default

    def range_start(self):
        m = re.match(r"bytes=(\d+)-$", self.headers.get("Range", ""))
        return int(m.group(1)) if m else None

    def send_blob(self, size, honour_range=True, cut_at=None, stall=False):
        start = self.range_start() if honour_range else None
        if start is not None and start >= size:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if start:
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        else:
            start = 0
            self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size - start))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        end = size if cut_at is None else max(start, min(size, cut_at))
        pos = start
        while pos < end:
            n = min(len(CHUNK), end - pos)
            self.wfile.write(pattern_bytes(pos, n))
            pos += n
        self.wfile.flush()
        if stall:
            time.sleep(30)
        if cut_at is not None:
            self.close_connection = True

    def do_GET(self):
        u = urlparse(self.path)
        self.query = parse_qs(u.query)
        parts = u.path.strip("/").split("/", 1)
        route, rest = parts[0], (parts[1] if len(parts) > 1 else "")
        st = self.server.state
        st.hit(u.path)
        size = self.q("size", 1000)
        if route == "blob":
            return self.send_blob(size)
        if route == "norange":
            return self.send_blob(size, honour_range=False)
        if route == "static":
            return self.send_static(rest)
        if route == "status":
            return self.send_text(int(rest), f"status {rest}\n")
        if route == "flaky":
            n = st.hit("flaky:" + rest)
            if n <= self.q("fails", 1):
                return self.send_text(500, "try again\n")
            return self.send_blob(size)
        if route == "truncate":
            n = st.hit("truncate:" + rest)
            if n <= self.q("times", 1):
                return self.send_blob(size, cut_at=size // 2)
            return self.send_blob(size)
        if route == "stall":
            return self.send_blob(size, cut_at=size // 2, stall=True)
        if route == "redirect":
            self.send_response(302)
            self.send_header("Location", self.query["to"][0])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if route == "chain":
            n = int(rest or "0")
            self.send_response(302)
            loc = f"/chain/{n - 1}?size={size}" if n > 1 else f"/blob/chained?size={size}"
            self.send_header("Location", loc)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if route == "json":
            want = self.q("bytes", 20)
            doc = {"ok": True, "items": ["x" * 10] * max(0, (want - 20) // 13)}
            return self.send_text(200, json.dumps(doc), "application/json")
        if route == "count":
            return self.send_text(200, str(st.counts.get("/" + rest, 0)))
        return self.send_text(404, "no such route\n")

    def send_text(self, code, text, ctype="text/plain"):
        body = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def send_static(self, rel):
        root = self.server.state.root
        path = os.path.realpath(os.path.join(root or "/nonexistent", rel))
        if not root or not path.startswith(os.path.realpath(root) + os.sep) or not os.path.isfile(path):
            return self.send_text(404, "not found\n")
        size = os.path.getsize(path)
        start = self.range_start() or 0
        if start >= size and size:
            return self.send_text(416, "")
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.send_header("Content-Length", str(size - start))
        self.end_headers()
        self.wfile.flush()
        with open(path, "rb") as f:
            offset = start
            while offset < size:
                sent = os.sendfile(self.connection.fileno(), f.fileno(), offset, size - offset)
                if sent <= 0:
                    break
                offset += sent


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # Clients hanging up mid-body (cancel, caps, timeouts) are the point of these tests.
        exc = sys.exc_info()[1]
        if not isinstance(exc, (BrokenPipeError, ConnectionResetError, TimeoutError)):
            super().handle_error(request, client_address)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", help="directory served under /static/")
    ap.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"), help="serve HTTPS")
    args = ap.parse_args()
    srv = Server(("127.0.0.1", 0), Handler)
    if args.tls:
        import ssl
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.tls[0], args.tls[1])
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    srv.state = State(args.root)
    print(f"PORT {srv.server_address[1]}", flush=True)
    # Exit when the parent closes our stdin (test finished or crashed).
    threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()
    srv.serve_forever()


if __name__ == "__main__":
    main()
