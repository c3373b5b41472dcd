"""cp_ws — a minimal RFC 6455 WebSocket client on the Python standard library.

Enough for the tests: the opening handshake (with Sec-WebSocket-Accept
checked), masked text/close/pong frames from the client, unmasked frames from
the server with 7/16/64-bit lengths, fragmented messages, automatic pong for
ping, and the closing handshake. Used for jobvisor-cp's /v1/ws and for the
Chrome DevTools protocol in the browser test. Every read has a timeout.
"""

import base64
import hashlib
import json
import os
import socket
import struct
import time
import urllib.parse

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class HandshakeError(Exception):
    def __init__(self, status, body):
        super().__init__("WebSocket handshake answered %s: %r" % (status, body[:200]))
        self.status = status
        self.body = body


class ConnectionClosed(Exception):
    def __init__(self, code=None, reason=b""):
        super().__init__("WebSocket closed (code %s)" % code)
        self.code = code
        self.reason = reason


class WebSocket:
    def __init__(self, url, headers=None, timeout=10, ssl_context=None):
        """url: ws://, or wss:// with ssl_context (an ssl.SSLContext that trusts the server)."""
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("ws", "wss") or (u.scheme == "wss") != (ssl_context is not None):
            raise ValueError("ws:// URLs, or wss:// with an ssl_context")
        host, port = u.hostname, u.port or (443 if u.scheme == "wss" else 80)
        path = (u.path or "/") + ("?" + u.query if u.query else "")
        self.sock = socket.create_connection((host, port), timeout=timeout)
        if ssl_context is not None:
            self.sock = ssl_context.wrap_socket(self.sock, server_hostname=host)
        self.sock.settimeout(timeout)
        self._buf = b""
        self.closed = False
        key = base64.b64encode(os.urandom(16)).decode()
        lines = ["GET %s HTTP/1.1" % path, "Host: %s:%d" % (host, port), "Upgrade: websocket",
                 "Connection: Upgrade", "Sec-WebSocket-Key: " + key, "Sec-WebSocket-Version: 13"]
        for k, v in (headers or {}).items():
            lines.append("%s: %s" % (k, v))
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = self._read_until(b"\r\n\r\n", deadline=time.monotonic() + timeout)
        status_line, _, rest = head.partition(b"\r\n")
        parts = status_line.split()
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        hdrs = {}
        for line in rest.split(b"\r\n"):
            if b":" in line:
                k, v = line.split(b":", 1)
                hdrs[k.strip().lower().decode()] = v.strip().decode()
        if status != 101:
            body = self._buf
            n = int(hdrs.get("content-length", "0") or 0)
            try:
                while len(body) < n:
                    chunk = self.sock.recv(65536)
                    if not chunk:
                        break
                    body += chunk
            except OSError:
                pass
            self.sock.close()
            raise HandshakeError(status, body)
        want = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
        if hdrs.get("sec-websocket-accept") != want:
            self.sock.close()
            raise HandshakeError(status, b"bad Sec-WebSocket-Accept")

    def _read_until(self, marker, deadline):
        while marker not in self._buf:
            self._recv_some(deadline)
        head, _, self._buf = self._buf.partition(marker)
        return head

    def _recv_some(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("WebSocket read timed out")
        self.sock.settimeout(left)
        chunk = self.sock.recv(65536)
        if not chunk:
            self.closed = True
            raise ConnectionClosed(None)
        self._buf += chunk

    def _read_exact(self, n, deadline):
        while len(self._buf) < n:
            self._recv_some(deadline)
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def send_frame(self, opcode, payload=b""):
        if isinstance(payload, str):
            payload = payload.encode()
        head = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack("!Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + masked)

    def send_text(self, text):
        self.send_frame(OP_TEXT, text)

    def send_json(self, obj):
        self.send_text(json.dumps(obj))

    def _read_frame(self, deadline):
        b0, b1 = self._read_exact(2, deadline)
        fin, opcode = bool(b0 & 0x80), b0 & 0x0F
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._read_exact(2, deadline))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._read_exact(8, deadline))[0]
        mask = self._read_exact(4, deadline) if b1 & 0x80 else None
        payload = self._read_exact(n, deadline)
        if mask:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return fin, opcode, payload

    def recv(self, timeout=10):
        """Next data message as (opcode, bytes); answers pings; raises ConnectionClosed."""
        deadline = time.monotonic() + timeout
        parts, first_op = [], None
        while True:
            fin, opcode, payload = self._read_frame(deadline)
            if opcode == OP_PING:
                self.send_frame(OP_PONG, payload)
                continue
            if opcode == OP_PONG:
                continue
            if opcode == OP_CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                if not self.closed:
                    try:
                        self.send_frame(OP_CLOSE, payload[:2])
                    except OSError:
                        pass
                self.closed = True
                raise ConnectionClosed(code, payload[2:])
            if opcode != OP_CONT:
                first_op = opcode
            parts.append(payload)
            if fin:
                return first_op, b"".join(parts)

    def recv_json(self, timeout=10):
        while True:
            opcode, data = self.recv(timeout)
            if opcode == OP_TEXT:
                return json.loads(data.decode())

    def close(self):
        if not self.closed:
            try:
                self.send_frame(OP_CLOSE, struct.pack("!H", 1000))
                self.closed = True
                deadline = time.monotonic() + 2
                while True:
                    self._read_frame(deadline)
            except (OSError, ConnectionClosed, socket.timeout, ValueError):
                pass
        self.sock.close()
