"""Named tokens with roles on the real jobvisor-cp: admin, operator, viewer;
tokens stored as SHA-256 hashes (made by `jobvisor-cp --hash-token`), the
file re-read on SIGHUP, and every mutating UI call in the audit log."""
import os
import signal
import subprocess
import time
import unittest

from cp_harness import ADMIN_TOKEN, ControlPlane, cp_bin, http

TOKENS = {"ops-admin": ("admin", "ops-admin-token-0123456789"),
          "alice": ("operator", "alice-token-0123456789abc"),
          "victor": ("viewer", "victor-token-0123456789abc")}


def hash_token(tok):
    p = subprocess.run([cp_bin(), "--hash-token"], input=tok + "\n", capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


def write_tokens(path, entries, mode=0o600):
    lines = ["# name role hash"] + ["%s %s %s" % (n, role, hash_token(tok)) for n, (role, tok) in entries.items()]
    fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.chmod(path + ".tmp", mode)
    os.rename(path + ".tmp", path)


class Roles(unittest.TestCase):
    def setUp(self):
        self.cp = ControlPlane()
        self.tokens = os.path.join(self.cp.dir, "tokens")
        write_tokens(self.tokens, TOKENS)
        self.cp.args = ["--tokens-file", self.tokens]
        self.cp.start()
        self.addCleanup(self.cp.close)

    def call(self, who, method, path, body=None):
        return http(self.cp.url + path, method, body, TOKENS[who][1])

    def job_body(self):
        return {"type": "BACKUP_INSTANCE", "agentId": "agent-1", "instanceId": "i1"}

    def wait_stderr(self, needle, timeout=10):
        deadline = time.monotonic() + timeout
        while needle not in self.cp.stderr_text():
            if time.monotonic() > deadline:
                self.fail("never logged %r:\n%s" % (needle, self.cp.stderr_text()[-2000:]))
            time.sleep(0.05)

    def test_roles_and_audit(self):
        with open(self.tokens) as f:
            text = f.read()
        for _, tok in TOKENS.values():
            self.assertNotIn(tok, text, "the file holds hashes, not tokens")
        self.assertIn("sha256:", text)
        # viewer: reads and watches, changes nothing.
        self.assertEqual(self.call("victor", "GET", "/v1/jobs").status, 200)
        self.assertEqual(self.call("victor", "GET", "/v1/schedules").status, 200)
        r = self.call("victor", "POST", "/v1/jobs", self.job_body())
        self.assertEqual(r.status, 403, r)
        self.assertIn("token 'victor' has the viewer role; this call needs operator", r.json["error"])
        # operator: creates and cancels.
        r = self.call("alice", "POST", "/v1/jobs", self.job_body())
        self.assertEqual(r.status, 201, r)
        job = r.json["jobId"]
        r = self.call("victor", "POST", "/v1/jobs/%s/cancel" % job)
        self.assertEqual(r.status, 403, "viewer cannot cancel")
        self.assertEqual(self.cp.job(job)["status"], "QUEUED")
        self.assertEqual(self.call("alice", "POST", "/v1/jobs/%s/cancel" % job).status, 200)
        self.assertEqual(self.cp.job(job)["status"], "CANCELLED")
        # metrics: admin only.
        self.assertEqual(self.call("alice", "GET", "/metrics").status, 403)
        self.assertEqual(self.call("ops-admin", "GET", "/metrics").status, 200)
        self.assertEqual(http(self.cp.url + "/v1/jobs", "GET", token="nobody-0123456789abcdef").status, 401)
        # The audit log: newest first, refused calls included, reads not logged.
        r = self.call("victor", "GET", "/v1/audit")
        self.assertEqual(r.status, 200, r)
        got = [(e["who"], e["role"], e["method"], e["path"], e["status"]) for e in r.json["entries"]]
        self.assertEqual(got, [
            ("alice", "operator", "POST", "/v1/jobs/%s/cancel" % job, 200),
            ("victor", "viewer", "POST", "/v1/jobs/%s/cancel" % job, 403),
            ("alice", "operator", "POST", "/v1/jobs", 201),
            ("victor", "viewer", "POST", "/v1/jobs", 403),
        ])
        self.assertTrue(all(e["at"].endswith("Z") for e in r.json["entries"]))
        r = self.call("victor", "GET", "/v1/audit?limit=2")
        self.assertEqual(len(r.json["entries"]), 2)
        r2 = self.call("victor", "GET", "/v1/audit?limit=2&cursor=" + r.json["nextCursor"])
        self.assertEqual([e["status"] for e in r2.json["entries"]], [201, 403])
        # The admin token file still works, as "admin".
        self.assertEqual(self.cp.api("POST", "/v1/jobs", self.job_body()).status, 201)
        self.assertEqual(self.call("victor", "GET", "/v1/audit?limit=1").json["entries"][0]["who"], "admin")

    def test_sighup_reloads_and_a_bad_file_keeps_the_old_set(self):
        new = dict(TOKENS)
        del new["victor"]
        new["vera"] = ("viewer", "vera-token-0123456789abcdef")
        new["alice"] = ("viewer", TOKENS["alice"][1])  # demoted
        write_tokens(self.tokens, new)
        self.cp.proc.send_signal(signal.SIGHUP)
        self.wait_stderr("SIGHUP: 3 named tokens loaded")
        self.assertEqual(self.call("victor", "GET", "/v1/jobs").status, 401, "a removed token stops at once")
        self.assertEqual(http(self.cp.url + "/v1/jobs", "GET", token=new["vera"][1]).status, 200)
        r = self.call("alice", "POST", "/v1/jobs", self.job_body())
        self.assertEqual(r.status, 403, r)
        # A file others can read is refused; the loaded set stays.
        write_tokens(self.tokens, TOKENS, mode=0o644)
        self.cp.proc.send_signal(signal.SIGHUP)
        self.wait_stderr("keeping the current tokens")
        self.assertIn("accessible by group or others", self.cp.stderr_text())
        self.assertEqual(http(self.cp.url + "/v1/jobs", "GET", token=new["vera"][1]).status, 200)
        self.assertEqual(self.call("victor", "GET", "/v1/jobs").status, 401)
        self.assertEqual(self.cp.proc.poll(), None)


class BadTokensFile(unittest.TestCase):
    def test_refused_at_start(self):
        cp = ControlPlane()
        self.addCleanup(cp.close)
        path = os.path.join(cp.dir, "tokens")
        cases = [("bob operator plaintext-token-0123456789\n", "expected 'NAME admin|operator|viewer sha256:HEX'"),
                 ("bob root sha256:" + "a" * 64 + "\n", "line 1"),
                 ("bob viewer sha256:" + "a" * 64 + "\nbob admin sha256:" + "b" * 64 + "\n", "the name is used twice"),
                 ("a viewer sha256:" + "a" * 64 + "\nb admin sha256:" + "a" * 64 + "\n", "the token is used twice")]
        for text, msg in cases:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            p = subprocess.run(cp.command() + ["--tokens-file", path], capture_output=True, text=True, timeout=30)
            self.assertEqual(p.returncode, 2, p.stderr)
            self.assertIn(msg, p.stderr)


if __name__ == "__main__":
    unittest.main()
