"""An HTTP proxy on 127.0.0.1 that can lose answers on purpose.

The agent talks to it instead of the control plane. Every request is
forwarded; `decide(method, path, request_body, status, answer_body)` then says
what the agent gets: "pass" (the answer) or "drop" (the connection closes with
no answer, as if the network lost it after the control plane acted on the
request). Requests it did not forward are answered 502 when `hold(path, body)`
says so, without reaching the control plane."""
import http.client
import http.server
import threading

HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
       "proxy-connection", "content-length"}


class DropProxy:
    def __init__(self, upstream_port, decide=None, hold=None):
        self.upstream_port = upstream_port
        self.decide = decide or (lambda *a: "pass")
        self.hold = hold or (lambda path, body: False)
        self.dropped = []  # (path, request body, answer body) of every lost answer
        self.held = []     # (path, request body) of every request kept from upstream
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def relay(self):
                try:
                    self.relay_one()
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the agent gave up on this connection

            def relay_one(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                if proxy.hold(self.path, body):
                    proxy.held.append((self.path, body))
                    self.send_response(502)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"{}")
                    return
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=120)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    resp = conn.getresponse()
                    answer = resp.read()
                    status, rheaders = resp.status, resp.getheaders()
                finally:
                    conn.close()
                if proxy.decide(self.command, self.path, body, status, answer) == "drop":
                    proxy.dropped.append((self.path, body, answer))
                    self.close_connection = True
                    return
                self.send_response(status)
                for k, v in rheaders:
                    if k.lower() not in HOP:
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            do_GET = do_POST = do_PUT = do_DELETE = relay

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
