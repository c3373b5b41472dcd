"""jobvisor-cp: authentication, authorization, strict input validation, UI listing.

Every bad input must get a clear 4xx with a JSON {error}, change nothing, and
leave the server running.
"""

import json
import os
import random
import socket
import subprocess
import tempfile
import unittest

from cp_harness import ADMIN_TOKEN, ControlPlane, CpTestCase, cp_bin, http


class Auth(CpTestCase):
    def test_missing_or_wrong_tokens_are_401_without_detail(self):
        agent = self.cp.agent()
        cases = [
            ("GET", "/v1/jobs", None),
            ("GET", "/v1/jobs", "wrong-token-0123456789abcdef"),
            ("GET", "/v1/agents", ADMIN_TOKEN + "x"),
            ("GET", "/v1/agents", ADMIN_TOKEN[:-1]),
            ("POST", "/v1/agents/%s/poll" % agent.id, None),
            ("POST", "/v1/agents/%s/poll" % agent.id, agent.token + "0"),
            ("POST", "/v1/runs/some-run/events", ""),
            ("POST", "/v1/runs/some-run/result", "x" * 600),
        ]
        for method, path, token in cases:
            with self.subTest(path=path, token=token):
                r = http(self.cp.url + path, method, {"capacity": 1}, token=token)
                self.assertEqual(r.status, 401)
                self.assertEqual(r.json, {"error": "unauthorized"})
                self.assertEqual(r.headers.get("WWW-Authenticate"), "Bearer")

    def test_non_bearer_authorization_is_401(self):
        r = http(self.cp.url + "/v1/jobs", headers={"Authorization": "Basic " + ADMIN_TOKEN})
        self.assertEqual(r.status, 401)

    def test_wrong_role_is_403(self):
        agent = self.cp.agent()
        self.assertEqual(self.cp.api("GET", "/v1/jobs", token=agent.token).status, 403)
        self.assertEqual(self.cp.api("POST", "/v1/jobs", {"type": "X"}, token=agent.token).status, 403)
        r = agent.poll(token=ADMIN_TOKEN)
        self.assertEqual(r.status, 403)
        self.assertIn("agent token", r.json["error"])
        # Agent tokens are per agent: polling as someone else is refused.
        other = self.cp.agent(self.cp.second_agent)
        r = http(self.cp.url + "/v1/agents/%s/poll" % agent.id, "POST", {"capacity": 1}, other.token)
        self.assertEqual(r.status, 403)

    def test_an_agent_cannot_touch_another_agents_run(self):
        job = self.cp.create_job()
        owner = self.cp.agent()
        [a] = owner.take()
        intruder = self.cp.agent(self.cp.second_agent)
        r = intruder.events(a["jobRunId"], [{"seq": 1, "kind": "progress", "message": "pwned"}])
        self.assertEqual(r.status, 403)
        self.assertEqual(intruder.result(a["jobRunId"], "COMPLETED").status, 403)
        j = self.cp.job(job["jobId"])
        self.assertEqual(j["status"], "RUNNING")
        self.assertFalse(j["runs"][0]["acknowledged"])
        self.assertEqual(self.cp.api("GET", "/v1/runs/%s/events" % a["jobRunId"]).json["events"], [])


class TokenFiles(unittest.TestCase):
    def run_cp(self, admin_mode=0o600, agents_mode=0o600, admin="admin-token-0123456789abcdef",
               agents="a1 agent-token-0123456789abcdef\n"):
        d = tempfile.TemporaryDirectory()
        self.addCleanup(d.cleanup)
        paths = {}
        for name, text, mode in (("admin", admin, admin_mode), ("agents", agents, agents_mode)):
            p = os.path.join(d.name, name)
            with open(p, "w") as f:
                f.write(text)
            os.chmod(p, mode)
            paths[name] = p
        cmd = [cp_bin(), "--listen", "127.0.0.1:0", "--db", os.path.join(d.name, "db.sqlite"),
               "--admin-token-file", paths["admin"], "--agents-file", paths["agents"]]
        return subprocess.run(cmd, capture_output=True, timeout=30)

    def test_group_or_other_readable_token_files_are_refused(self):
        r = self.run_cp(admin_mode=0o640)
        self.assertEqual(r.returncode, 2)
        self.assertIn(b"accessible by group or others", r.stderr)
        r = self.run_cp(agents_mode=0o604)
        self.assertEqual(r.returncode, 2)
        self.assertIn(b"agents file", r.stderr)

    def test_bad_token_file_contents_are_refused(self):
        for kw, needle in (({"admin": "short"}, b"too short"),
                           ({"agents": "a1\n"}, b"expected 'agentId token'"),
                           ({"agents": "bad/id agent-token-0123456789abcdef\n"}, b"bad agent id"),
                           ({"agents": "a1 agent-token-0123456789abcdef\na1 agent-token-0123456789abcdeg\n"},
                            b"listed twice"),
                           ({"agents": "a1 agent-token-0123456789abcdef\na2 agent-token-0123456789abcdef\n"},
                            b"share a token"),
                           ({"agents": "# nobody\n"}, b"lists no agent"),
                           ({"agents": "a1 admin-token-0123456789abcdef\n"}, b"uses the admin token")):
            with self.subTest(needle=needle):
                r = self.run_cp(**kw)
                self.assertEqual(r.returncode, 2, r.stderr)
                self.assertIn(needle, r.stderr)

    def test_bad_command_lines_are_usage_errors(self):
        for args in ([], ["--listen", "nope"], ["--listen", "127.0.0.1:99999"], ["--threads", "2"],
                     ["--job-types", "lower_case"], ["--bogus"]):
            with self.subTest(args=args):
                r = subprocess.run([cp_bin()] + args, capture_output=True, timeout=30)
                self.assertEqual(r.returncode, 2)
                self.assertTrue(r.stderr)


class Malformed(CpTestCase):
    def assert400(self, r, needle=None):
        self.assertEqual(r.status, 400, r)
        self.assertIsInstance(r.json, dict)
        self.assertIsInstance(r.json.get("error"), str)
        if needle:
            self.assertIn(needle, r.json["error"])

    def test_malformed_poll_bodies(self):
        agent = self.cp.agent()
        url = self.cp.url + "/v1/agents/%s/poll" % agent.id
        for raw, needle in ((b"{", "not valid JSON"), (b"[]", "JSON object"), (b"", "empty"),
                            (b"{} x", "not valid JSON"), (b"\xff\xfe", "not valid JSON")):
            with self.subTest(raw=raw):
                self.assert400(http(url, "POST", raw=raw, token=agent.token), needle)
        for body, needle in (({"capacity": "2"}, "capacity"), ({"capacity": -1}, "capacity"),
                             ({"capacity": 1.5}, "capacity"), ({"waitSeconds": -1}, "waitSeconds"),
                             ({"waitSeconds": True}, "waitSeconds"), ({"running": {}}, "running"),
                             ({"running": [{"jobRunId": 5}]}, "jobRunId"),
                             ({"running": [{"jobRunId": "../x"}]}, "jobRunId"),
                             ({"running": [{"jobRunId": "r", "lastSeq": "1"}]}, "lastSeq")):
            with self.subTest(body=body):
                self.assert400(http(url, "POST", body, agent.token), needle)

    def test_malformed_events_store_nothing(self):
        self.cp.create_job()
        agent = self.cp.agent()
        [a] = agent.take()
        rid = a["jobRunId"]
        good = {"seq": 1, "kind": "progress", "message": "ok"}
        bad_events = [
            ({"seq": 0, "kind": "progress"}, "seq"),
            ({"seq": "1", "kind": "progress"}, "seq"),
            ({"seq": 1.5, "kind": "progress"}, "seq"),
            ({"seq": 2, "kind": "Bad Kind"}, "kind"),
            ({"seq": 2}, "kind"),
            ({"seq": 2, "kind": "progress", "percent": 101}, "percent"),
            ({"seq": 2, "kind": "progress", "percent": "50"}, "percent"),
            ({"seq": 2, "kind": "progress", "status": "DONE"}, "status"),
            ({"seq": 2, "kind": "log", "level": "loud"}, "level"),
            ({"seq": 2, "kind": "progress", "message": 5}, "message"),
            ({"seq": 2, "kind": "progress", "message": "x" * 5000}, "message"),
            ({"seq": 2, "kind": "progress", "jobRunId": "other"}, "jobRunId"),
            ({"seq": 2, "kind": "progress", "jobId": "other"}, "jobId"),
            ({"seq": 2, "kind": "progress", "instanceId": "other"}, "instanceId"),
            ({"seq": 2, "kind": "progress", "timestamp": "yesterday"}, "timestamp"),
            ("not an object", "object"),
        ]
        for ev, needle in bad_events:
            with self.subTest(ev=ev):
                self.assert400(agent.events(rid, [good, ev]), needle)
        self.assert400(http(self.cp.url + "/v1/runs/%s/events" % rid, "POST", {"events": {}}, agent.token), "array")
        self.assert400(http(self.cp.url + "/v1/runs/%s/events" % rid, "POST", {}, agent.token), "array")
        many = [{"seq": s, "kind": "log", "message": "m"} for s in range(1, 1002)]
        self.assert400(agent.events(rid, many), "more than 1000")
        # Nothing was stored and the run is still unacknowledged.
        self.assertEqual(self.cp.api("GET", "/v1/runs/%s/events" % rid).json["events"], [])
        self.assertFalse(self.cp.api("GET", "/v1/runs/" + rid).json["acknowledged"])
        self.assertEqual(agent.events(rid, [good]).json["ackSeq"], 1)

    def test_oversize_body_is_refused(self):
        agent = self.cp.agent()
        big = b'{"capacity": 1, "pad": "' + b"x" * (1024 * 1024 + 10) + b'"}'
        r = http(self.cp.url + "/v1/agents/%s/poll" % agent.id, "POST", raw=big, token=agent.token)
        self.assert400(r, "larger than")
        self.assertEqual(agent.poll().status, 200)

    def test_malformed_results(self):
        job = self.cp.create_job()
        agent = self.cp.agent()
        [a] = agent.take()
        url = self.cp.url + "/v1/runs/%s/result" % a["jobRunId"]
        for body, needle in (({"status": "OK"}, "status"), ({}, "status"),
                             ({"status": "FAILED", "error": "boom"}, "error"),
                             ({"status": "FAILED", "error": {"message": 1}}, "error.message"),
                             ({"status": "FAILED", "error": {"message": "x", "retryable": "yes"}}, "retryable"),
                             ({"status": "COMPLETED", "finishedAt": 12}, "finishedAt"),
                             ({"status": "COMPLETED", "lastSeq": -1}, "lastSeq")):
            with self.subTest(body=body):
                self.assert400(http(url, "POST", body, agent.token), needle)
        self.assertEqual(self.cp.job(job["jobId"])["status"], "RUNNING")

    def test_create_job_validation(self):
        base = {"type": "BACKUP_INSTANCE", "agentId": self.cp.default_agent, "instanceId": "mc1"}
        cases = [
            ({"type": "MINE_BITCOIN"}, "unknown job type"),
            ({"type": "backup_instance"}, "type"),
            ({"type": 5}, "type"),
            ({"agentId": "nobody"}, "unknown agent"),
            ({"agentId": "../etc"}, "agentId"),
            ({"instanceId": "../x"}, "instanceId"),
            ({"instanceId": ".hidden"}, "instanceId"),
            ({"instanceId": "x" * 65}, "instanceId"),
            ({"params": [1]}, "params"),
            ({"params": "x"}, "params"),
            ({"maxAttempts": 0}, "maxAttempts"),
            ({"maxAttempts": "3"}, "maxAttempts"),
            ({"timeoutSeconds": -5}, "timeoutSeconds"),
            ({"cancelGraceSeconds": 1.5}, "cancelGraceSeconds"),
            ({"jobId": "bad id"}, "jobId"),
            ({"colour": "red"}, "unknown field"),
        ]
        for change, needle in cases:
            body = dict(base)
            body.update(change)
            with self.subTest(change=change):
                self.assert400(self.cp.api("POST", "/v1/jobs", body), needle)
        listed = self.cp.api("GET", "/v1/jobs?agentId=" + self.cp.default_agent).json["jobs"]
        self.assertEqual(listed, [])

    def test_huge_params_are_refused_and_huge_outputs_replaced_by_a_note(self):
        r = self.cp.api("POST", "/v1/jobs", {"type": "SYNC_MODS", "agentId": self.cp.default_agent,
                                             "instanceId": "mc", "params": {"blob": "x" * 70000}})
        self.assert400(r, "params")
        self.cp.create_job()
        agent = self.cp.agent()
        [a] = agent.take()
        agent.progress(a, 1, "x")
        r = agent.result(a["jobRunId"], "COMPLETED", output={"blob": "y" * 300000})
        self.assertEqual(r.status, 200)
        run = self.cp.api("GET", "/v1/runs/" + a["jobRunId"]).json
        self.assertEqual(run["status"], "COMPLETED")
        self.assertEqual(run["output"]["outputTooLarge"], True)
        self.assertGreater(run["output"]["bytes"], 300000)

    def test_create_with_a_client_job_id_is_idempotent(self):
        body = {"jobId": "panel-42", "type": "START_INSTANCE", "agentId": self.cp.default_agent,
                "instanceId": "mc1"}
        r1 = self.cp.api("POST", "/v1/jobs", body)
        self.assertEqual(r1.status, 201)
        self.assertEqual(r1.json["jobId"], "panel-42")
        r2 = self.cp.api("POST", "/v1/jobs", body)
        self.assertEqual(r2.status, 200)
        self.assertEqual(len(r2.json["runs"]), 1)
        body["instanceId"] = "mc2"
        self.assertEqual(self.cp.api("POST", "/v1/jobs", body).status, 409)

    def test_bad_paths_and_methods(self):
        self.assertEqual(self.cp.api("GET", "/v1/nothing").status, 404)
        self.assertEqual(self.cp.api("GET", "/v1/jobs/").status, 404)
        self.assertEqual(self.cp.api("DELETE", "/v1/jobs").status, 405)
        self.assertEqual(self.cp.api("GET", "/v1/jobs/bad$id").status, 400)
        self.assertEqual(self.cp.api("GET", "/v1/jobs/" + "x" * 200).status, 404)
        self.assertEqual(self.cp.api("GET", "/v1/jobs/no-such").status, 404)
        self.assertEqual(self.cp.api("GET", "/v1/runs/no-such").status, 404)
        self.assertEqual(self.cp.api("GET", "/v1/runs/no-such/events").status, 404)
        agent = self.cp.agent()
        r = http(self.cp.url + "/v1/agents/bad!id/poll", "POST", {}, agent.token)
        self.assertEqual(r.status, 400)
        self.assertEqual(self.cp.api("GET", "/v1/jobs?status=DONE").status, 400)
        self.assertEqual(self.cp.api("GET", "/v1/jobs?limit=0").status, 400)
        self.assertEqual(self.cp.api("GET", "/v1/jobs?cursor=abc").status, 400)
        self.assertEqual(self.cp.api("GET", "/v1/runs/x/events?after=-1").status, 400)
        self.assertEqual(http(self.cp.url + "/favicon.ico").status, 404)


class Listing(CpTestCase):
    def test_filters_and_paging(self):
        me = self.cp.default_agent
        ids = [self.cp.create_job(instance="p%d" % (n % 2))["jobId"] for n in range(5)]
        self.cp.api("POST", "/v1/jobs/%s/cancel" % ids[0])
        seen = []
        cursor = None
        pages = 0
        while True:
            q = "/v1/jobs?agentId=%s&limit=2" % me + ("&cursor=" + cursor if cursor else "")
            r = self.cp.api("GET", q)
            self.assertEqual(r.status, 200)
            self.assertLessEqual(len(r.json["jobs"]), 2)
            seen += [j["jobId"] for j in r.json["jobs"]]
            pages += 1
            cursor = r.json["nextCursor"]
            if not cursor:
                break
        self.assertEqual(pages, 3)
        self.assertEqual(seen, list(reversed(ids)), "newest first, each once")
        r = self.cp.api("GET", "/v1/jobs?agentId=%s&status=CANCELLED" % me).json["jobs"]
        self.assertEqual([j["jobId"] for j in r], [ids[0]])
        r = self.cp.api("GET", "/v1/jobs?agentId=%s&status=QUEUED,CANCELLED&instanceId=p0" % me).json["jobs"]
        self.assertEqual(sorted(j["jobId"] for j in r), sorted([ids[0], ids[2], ids[4]]))
        r = self.cp.api("GET", "/v1/jobs?agentId=%s&type=START_INSTANCE" % me).json["jobs"]
        self.assertEqual(r, [])
        self.assertTrue(all("runs" in j for j in self.cp.api("GET", "/v1/jobs").json["jobs"]))


class CustomTypes(CpTestCase):
    CP_ARGS = ("--job-types", "WIPE_CACHE,ROTATE_LOGS")

    def test_listed_custom_types_are_accepted_and_others_refused(self):
        r = self.cp.api("POST", "/v1/jobs", {"type": "WIPE_CACHE", "agentId": self.cp.default_agent,
                                             "instanceId": "mc"})
        self.assertEqual(r.status, 201)
        r = self.cp.api("POST", "/v1/jobs", {"type": "ROTATE_LOGZ", "agentId": self.cp.default_agent,
                                             "instanceId": "mc"})
        self.assertEqual(r.status, 400)
        self.assertEqual(self.cp.agent().take()[0]["type"], "WIPE_CACHE")


class Hostile(CpTestCase):
    """Random and nasty inputs: always a 4xx/2xx JSON answer, never a 5xx or a crash
    (tearDownClass fails on any sanitizer report)."""

    def test_random_bodies_on_every_endpoint(self):
        rnd = random.Random(1234)
        job = self.cp.create_job()
        agent = self.cp.agent()
        [a] = agent.take()
        run = a["jobRunId"]
        endpoints = [("POST", "/v1/agents/%s/poll" % agent.id, agent.token),
                     ("POST", "/v1/runs/%s/events" % run, agent.token),
                     ("POST", "/v1/runs/%s/result" % run, agent.token),
                     ("POST", "/v1/jobs", ADMIN_TOKEN),
                     ("POST", "/v1/jobs/%s/cancel" % job["jobId"], ADMIN_TOKEN)]
        values = [None, True, -1, 0, 1e308, -1e308, 2 ** 63, 1.5, "", "x" * 5000, "\u0000", "\ud83d\ude00",
                  [], {}, [None], {"a": {"b": []}}, "RUNNING", "COMPLETED", "../../etc/passwd"]
        keys = ["capacity", "running", "waitSeconds", "events", "seq", "kind", "status", "percent", "message",
                "output", "error", "lastSeq", "type", "agentId", "instanceId", "params", "maxAttempts", "jobId"]
        bodies = [b"[" * 5000 + b"]" * 5000, b'{"a":' * 3000 + b"1" + b"}" * 3000, b"\x00" * 100,
                  b'{"events":[' + b'{"seq":1,"kind":"log"},' * 999 + b'{"seq":1,"kind":"log"}]}',
                  b'{"running":' + json.dumps([{"jobRunId": "r%d" % i} for i in range(1024)]).encode() + b"}"]
        for _ in range(300):
            obj = {rnd.choice(keys): rnd.choice(values) for _ in range(rnd.randint(0, 4))}
            if rnd.random() < 0.3:
                obj["events"] = [{rnd.choice(keys): rnd.choice(values) for _ in range(3)}]
            bodies.append(json.dumps(obj).encode())
        for body in bodies:
            method, path, token = rnd.choice(endpoints)
            r = http(self.cp.url + path, method, raw=body, token=token)
            self.assertLess(r.status, 500, (path, body[:200], r))
            self.assertIsInstance(r.json, dict, (path, body[:200], r))
        # Broken HTTP on a raw socket is closed, not fatal.
        for junk in (b"GARBAGE\r\n\r\n", b"POST /v1/jobs HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
                     b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n"):
            with socket.create_connection(("127.0.0.1", self.cp.port), timeout=10) as s:
                s.sendall(junk)
                try:
                    s.recv(4096)
                except OSError:
                    pass
        self.assertEqual(self.cp.api("GET", "/v1/agents").status, 200)
        self.assertIn(self.cp.job(job["jobId"])["status"], ("RUNNING", "CANCELLED"))


if __name__ == "__main__":
    unittest.main()
