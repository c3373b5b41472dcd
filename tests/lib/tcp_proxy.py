"""A TCP proxy on 127.0.0.1 (OS-assigned port) in front of a real server, for network faults:
stall_next() makes the next connection(s) accept the client's bytes and then go silent (nothing
forwarded either way, the socket left open), the way a dead NAT mapping or a hung peer looks."""
import select
import socket
import threading


class TcpProxy:
    def __init__(self, target_port):
        self.target = ("127.0.0.1", target_port)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.stalls = 0
        self.stalled = 0
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
        try:
            while not self.closing:
                r, _, _ = select.select(socks, [], [], 0.5)
                for s in r:
                    data = s.recv(65536)
                    if not data:
                        return
                    (u if s is c else c).sendall(data)
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
