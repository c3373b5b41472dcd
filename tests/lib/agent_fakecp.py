"""A hostile stand-in for the control plane, for agent tests (stdlib only).

FakeCP implements the agent side of the wire protocol V1 (DESIGN.md section 5)
on 127.0.0.1 with an OS-assigned port and records everything it receives.
Faults can be switched on per endpoint ("poll", "events", "result") for the
next N requests or until cleared:

  down        the listening socket is closed (connection refused)
  500 / 503   server error (body {"error": ...})
  429         Too Many Requests with Retry-After (seconds, `retry_after`)
  400         a client error (the agent must not retry forever)
  409         this agent no longer holds the run
  garbage     200 with a body that is not JSON
  wrongtypes  200 with JSON of the wrong shape
  huge        200 with a body far larger than the agent accepts
  slow        slow-loris: headers, then one byte a second
  lostack     events/result are stored, but the answer is a 500 (the agent resends)
  b"..."      (a bytes object) 200 with exactly these bytes as the body (fuzz corpus replay)

Events are kept once per (jobRunId, seq), like a real control plane; every
POST is also recorded raw so tests can assert on order and duplicates.
"""
import json
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Run:
    def __init__(self, assignment):
        self.assignment = assignment
        self.events = {}          # seq -> event (first copy kept)
        self.arrived = {}         # seq -> time.time() when first stored
        self.created = time.time()
        self.event_posts = []     # list of [seq, ...] per POST, in arrival order
        self.duplicates = 0       # events received again after being stored
        self.results = []         # every result body received
        self.cancel = False
        self.gone = False         # answer 409 for this run
        self.delivered_to_agent = False

    @property
    def result(self):
        return self.results[0] if self.results else None

    def seqs(self):
        return sorted(self.events)

    def contiguous(self):
        n = 0
        while (n + 1) in self.events:
            n += 1
        return n


class FakeCP:
    def __init__(self, agent_id="agent-1", token="agent-token-123", long_poll=True,
                 poll_interval=None, lease=None, tls=None):
        """tls: (certfile, keyfile) to serve https instead of http."""
        self.tls = tls
        self.agent_id = agent_id
        self.token = token
        self.long_poll = long_poll
        self.poll_interval = poll_interval
        self.lease = lease
        self.lock = threading.Condition()
        self.queue = []              # assignments not yet handed out
        self.raw_queue = []          # raw JSON values to hand out as-is
        self.forced_queue = []       # ... even beyond the agent's capacity
        self.runs = {}               # jobRunId -> Run
        self.polls = []              # (time, body) of every poll
        self.unauthorized = 0
        self.bad_requests = []       # protocol violations seen from the agent
        self.faults = {}             # endpoint -> [mode, remaining or None]
        self.retry_after = 1
        self.requests = []           # (time, endpoint, path)
        self.conns = set()           # open client connections (closed by go_down)
        self._server = None
        self.port = 0
        self._start()

    # ---- server lifecycle ----
    def _start(self):
        cp = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def setup(self):
                super().setup()
                # Headers and body go out as separate writes: without this,
                # Nagle + the client's delayed ACK add ~40 ms to every answer.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with cp.lock:
                    cp.conns.add(self.connection)

            def finish(self):
                try:
                    super().finish()
                finally:
                    with cp.lock:
                        cp.conns.discard(self.connection)

            def handle(self):
                try:
                    super().handle()
                except OSError:
                    pass  # the agent hung up (timeouts, size caps): expected here

            def do_POST(self):
                cp._handle(self)

            def do_GET(self):
                self._reply(404, {"error": "not found"})

            def _reply(self, status, obj, headers=None):
                body = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", self.port), Handler)
        if self.tls:
            import ssl
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*self.tls)
            self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        # a short poll: shutdown() (every stop and go_down) waits for it
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    @property
    def url(self):
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def go_down(self):
        """Close the listening socket: the agent sees connection refused."""
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        # Keep-alive connections would go on being served: cut them too.
        with self.lock:
            conns = list(self.conns)
            self.lock.notify_all()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def come_up(self):
        if not self._server:
            deadline = time.time() + 10
            while True:
                try:
                    self._start()
                    return
                except OSError:
                    if time.time() > deadline:
                        raise
                    time.sleep(0.1)

    def stop(self):
        self.go_down()
        with self.lock:
            self.lock.notify_all()

    # ---- test controls ----
    def add_job(self, type_, instance="inst-1", params=None, run_id=None, job_id=None, **extra):
        run_id = run_id or "run-" + uuid.uuid4().hex[:12]
        a = {"jobId": job_id or "job-" + uuid.uuid4().hex[:12], "jobRunId": run_id, "attempt": 1,
             "type": type_, "instanceId": instance, "params": params if params is not None else {},
             "timeoutSeconds": 60, "cancelGraceSeconds": 2,
             "createdAt": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())}
        a.update(extra)
        with self.lock:
            self.runs[run_id] = Run(a)
            self.queue.append(a)
            self.lock.notify_all()
        return run_id

    def add_raw(self, value, run_id=None, force=False):
        """Hand out value as an assignment as-is (garbage tests). run_id, if
        given, is registered so events/results for it are accepted. force:
        hand it out even when the agent says it has no capacity."""
        with self.lock:
            if run_id:
                self.runs[run_id] = Run(value)
            (self.forced_queue if force else self.raw_queue).append(value)
            self.lock.notify_all()

    def cancel(self, run_id):
        with self.lock:
            self.runs[run_id].cancel = True
            self.lock.notify_all()

    def revoke(self, run_id):
        """From now on answer 409 for this run."""
        with self.lock:
            self.runs[run_id].gone = True

    def fault(self, endpoint, mode, count=None):
        with self.lock:
            if mode is None:
                self.faults.pop(endpoint, None)
            else:
                self.faults[endpoint] = [mode, count]

    def clear_faults(self):
        with self.lock:
            self.faults.clear()

    def run(self, run_id):
        with self.lock:
            return self.runs.get(run_id)

    def wait(self, predicate, timeout=20, what="condition"):
        deadline = time.time() + timeout
        with self.lock:
            while True:
                v = predicate()
                if v:
                    return v
                left = deadline - time.time()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for {what}")
                self.lock.wait(min(left, 0.05))

    def wait_result(self, run_id, timeout=20):
        return self.wait(lambda: self.runs[run_id].result, timeout, f"result of {run_id}")

    def wait_status(self, run_id, status, timeout=20):
        def seen():
            return any(e.get("status") == status for e in self.runs[run_id].events.values())
        return self.wait(seen, timeout, f"{status} event of {run_id}")

    def poll_count(self):
        with self.lock:
            return len(self.polls)

    # ---- request handling ----
    def _take_fault(self, endpoint):
        with self.lock:
            f = self.faults.get(endpoint) or self.faults.get("all")
            if not f:
                return None
            mode, left = f
            if left is not None:
                f[1] = left - 1
                if f[1] <= 0:
                    for k, v in list(self.faults.items()):
                        if v is f:
                            del self.faults[k]
            return mode

    def _read_body(self, h):
        n = int(h.headers.get("Content-Length") or 0)
        data = h.rfile.read(n) if n else b""
        try:
            return json.loads(data)
        except ValueError:
            with self.lock:
                self.bad_requests.append(("not json", h.path, data[:200]))
            return None

    def _handle(self, h):
        path = h.path
        parts = path.strip("/").split("/")
        if len(parts) == 4 and parts[:2] == ["v1", "agents"] and parts[3] == "poll":
            endpoint = "poll"
        elif len(parts) == 4 and parts[:2] == ["v1", "runs"] and parts[3] in ("events", "result"):
            endpoint = parts[3]
        else:
            # Like any HTTP server: take the body off the connection first, or
            # it would be read as the next request on this keep-alive socket.
            n = int(h.headers.get("Content-Length") or 0)
            if n:
                h.rfile.read(n)
            h._reply(404, {"error": "no such endpoint"})
            return
        with self.lock:
            if self._server is None:
                h.close_connection = True
                return
            self.requests.append((time.time(), endpoint, path))
        if h.headers.get("Authorization") != f"Bearer {self.token}":
            with self.lock:
                self.unauthorized += 1
            h._reply(401, {"error": "bad agent token"})
            return
        body = self._read_body(h)
        mode = self._take_fault(endpoint)
        if mode and mode != "lostack" and self._fault_reply(h, mode):
            return
        if endpoint == "poll":
            self._poll(h, parts[2], body)
        elif endpoint == "events":
            self._events(h, parts[2], body, lost=(mode == "lostack"))
        else:
            self._result(h, parts[2], body, lost=(mode == "lostack"))

    def _fault_reply(self, h, mode):
        if isinstance(mode, bytes):
            h._reply(200, mode)
        elif mode in ("500", "503"):
            h._reply(int(mode), {"error": "injected server error"})
        elif mode == "429":
            h._reply(429, {"error": "slow down"}, {"Retry-After": str(self.retry_after)})
        elif mode == "400":
            h._reply(400, {"error": "injected bad request"})
        elif mode == "409":
            h._reply(409, {"error": "run is not yours"})
        elif mode == "garbage":
            h._reply(200, b"{this is not json")
        elif mode == "wrongtypes":
            h._reply(200, {"jobs": "nope", "cancel": 7, "ackSeq": "three", "cancelRequested": []})
        elif mode == "huge":
            try:
                h.send_response(200)
                h.send_header("Content-Type", "application/json")
                h.send_header("Content-Length", str(64 << 20))
                h.end_headers()
                chunk = b" " * 65536
                for _ in range(1024):
                    h.wfile.write(chunk)
            except OSError:
                pass
        elif mode == "slow":
            try:
                h.send_response(200)
                h.send_header("Content-Type", "application/json")
                h.send_header("Content-Length", "1000")
                h.end_headers()
                for _ in range(60):
                    h.wfile.write(b" ")
                    h.wfile.flush()
                    time.sleep(1)
            except OSError:
                pass
        elif mode == "down":
            # Closing mid-request: no answer at all.
            h.close_connection = True
            try:
                h.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        else:
            return False
        return True

    def _check_poll_body(self, body):
        ok = (isinstance(body, dict) and isinstance(body.get("capacity"), int)
              and isinstance(body.get("running"), list) and isinstance(body.get("waitSeconds"), int)
              and all(isinstance(r, dict) and isinstance(r.get("jobRunId"), str)
                      and isinstance(r.get("lastSeq"), int) for r in body["running"]))
        if not ok:
            self.bad_requests.append(("poll body", body))
        return ok

    def _poll(self, h, agent_id, body):
        if agent_id != self.agent_id:
            h._reply(404, {"error": "unknown agent"})
            return
        with self.lock:
            self.polls.append((time.time(), body))
            if not self._check_poll_body(body):
                h._reply(400, {"error": "bad poll body"})
                return
            running = {r["jobRunId"] for r in body["running"]}
            # Like jobvisor-cp: capacity is the agent's total; runs it holds count.
            capacity = body["capacity"] - len(running)
            wait = body["waitSeconds"] if self.long_poll else 0
            deadline = time.time() + min(wait, 30)

            def work():
                cancels = [rid for rid, r in self.runs.items() if r.cancel and rid in running]
                return (capacity > 0 and (self.queue or self.raw_queue)) or cancels or self.forced_queue

            while wait > 0 and not work() and time.time() < deadline and self._server:
                self.lock.wait(min(0.05, max(0.0, deadline - time.time())))
            jobs = self.forced_queue
            self.forced_queue = []
            while self.raw_queue and len(jobs) < max(capacity, 0):
                jobs.append(self.raw_queue.pop(0))
            while self.queue and len(jobs) < capacity:
                a = self.queue.pop(0)
                self.runs[a["jobRunId"]].delivered_to_agent = True
                jobs.append(a)
            cancels = [rid for rid, r in self.runs.items() if r.cancel and rid in running]
            self.lock.notify_all()
        answer = {"jobs": jobs, "cancel": cancels}
        if self.poll_interval:
            answer["pollIntervalSeconds"] = self.poll_interval
        if self.lease:
            answer["leaseSeconds"] = self.lease
        h._reply(200, answer)

    def _events(self, h, run_id, body, lost=False):
        with self.lock:
            run = self.runs.get(run_id)
            if run is None:
                h._reply(404, {"error": "unknown run"})
                return
            if run.gone:
                h._reply(409, {"error": "run reassigned"})
                return
            evs = body.get("events") if isinstance(body, dict) else None
            if not isinstance(evs, list):
                self.bad_requests.append(("events body", body))
                h._reply(400, {"error": "events must be a list"})
                return
            seqs = []
            for e in evs:
                seq = e.get("seq") if isinstance(e, dict) else None
                if not isinstance(seq, int) or seq < 1:
                    self.bad_requests.append(("event", e))
                    continue
                seqs.append(seq)
                if seq in run.events:
                    run.duplicates += 1
                else:
                    run.events[seq] = e
                    run.arrived[seq] = time.time()
            run.event_posts.append(seqs)
            ack = run.contiguous()
            cancel = run.cancel
            self.lock.notify_all()
        if lost:
            h._reply(500, {"error": "stored, but the answer got lost"})
            return
        h._reply(200, {"ackSeq": ack, "cancelRequested": cancel})

    def _result(self, h, run_id, body, lost=False):
        with self.lock:
            run = self.runs.get(run_id)
            if run is None:
                h._reply(404, {"error": "unknown run"})
                return
            if run.gone:
                h._reply(409, {"error": "run reassigned"})
                return
            if not isinstance(body, dict) or body.get("status") not in ("COMPLETED", "FAILED", "CANCELLED"):
                self.bad_requests.append(("result body", body))
                h._reply(400, {"error": "bad result"})
                return
            run.results.append(body)
            self.lock.notify_all()
        if lost:
            h._reply(500, {"error": "stored, but the answer got lost"})
            return
        h._reply(200, {"ok": True})
