"""INSTALL_SERVER and UPDATE_SERVER with a SteamCMD source, end to end through `jobvisor run`,
with the stand-in tests/steamcmd/steamcmd (command line, output and exit codes of the real
one; it does not talk to Steam). Covers: progress lines -> job progress, failure lines ->
FAILED messages (retryable or not), staging + one rename into builds/<id>, activation and a
real start of the installed server, and a retry after kill -9 that continues SteamCMD's own
partial download instead of fetching it again."""
import json
import os
import shutil
import signal
import stat
import time
import unittest

from instance_helpers import default_spec
from jv_run import JobvisorTestCase

HERE = os.path.dirname(os.path.abspath(__file__))
STANDIN = os.path.join(HERE, "..", "steamcmd", "steamcmd")
DEMO = os.environ.get("JV_DEMO_SERVER_BIN", "")
APP = "896660"


class SteamCase(JobvisorTestCase):
    def setUp(self):
        super().setUp()
        self.bin = os.path.join(self.tmp, "steam")
        os.makedirs(self.bin)
        self.steamcmd = os.path.join(self.bin, "steamcmd")
        shutil.copy2(STANDIN, self.steamcmd)
        self.conf = os.path.join(self.tmp, "agent.conf")
        with open(self.conf, "w") as f:
            f.write(f"steamcmd = {self.steamcmd}\n")
        self.fixture({})

    def fixture(self, app, accounts=None, **more):
        base = {"files": {"server": {"copy": DEMO, "mode": 0o755},
                          "config/default.cfg": {"text": "maxplayers=16\n"}},
                "chunks": 12, "delay": 0.02}
        base.update(app)
        with open(os.path.join(self.bin, "steamcmd.json"), "w") as f:
            json.dump({"apps": {APP: base, **more}, "accounts": accounts or {}}, f)

    def fetches(self):
        try:
            with open(os.path.join(self.bin, "steamcmd.log")) as f:
                return [l.split()[2] for l in f if l.startswith("fetch ")]
        except OSError:
            return []

    def job(self, what, params, **kw):
        return self.run_job(what, params=params, extra=["--config", self.conf], **kw)

    def install_params(self, build="b1", **steam):
        src = {"appId": APP}
        src.update(steam)
        return {"source": {"steam": src}, "build": build, "instance": default_spec()}


class SteamInstall(SteamCase):
    def test_install_reports_progress_publishes_the_build_and_it_starts(self):
        self.fixture({"delay": 0.2})  # 12 chunks over ~2.4 s: several progress events get through the throttle
        r = self.job("INSTALL_SERVER", self.install_params(validate=True))
        self.assertEqual(r.code, 0, r)
        self.assertEqual(r.result["output"]["build"], "b1")
        inst = self.instance_dir()
        build = os.path.join(inst, "builds", "b1")
        self.assertEqual(os.readlink(os.path.join(inst, "current")), "builds/b1")
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(build, "server")).st_mode), 0o755)
        with open(os.path.join(build, "config", "default.cfg")) as f:
            self.assertEqual(f.read(), "maxplayers=16\n")
        self.assertTrue(os.path.exists(os.path.join(build, "steamapps", f"appmanifest_{APP}.acf")))
        self.assertFalse(os.path.exists(os.path.join(build, "steamapps", "downloading")))
        # SteamCMD's "downloading, progress: P" lines moved the job between 2 % and 84 %
        pcts = [e["percent"] for e in r.events if e["kind"] == "progress" and e.get("percent") is not None]
        mid = sorted({p for p in pcts if 2 < p < 84})
        self.assertGreaterEqual(len(mid), 3, pcts)
        self.assertEqual(pcts, sorted(pcts), "progress went backwards")
        self.assertEqual(len(self.fetches()), 12)
        staging = os.path.join(inst, ".jobvisor", "staging")
        self.assertEqual(os.listdir(staging) if os.path.isdir(staging) else [], [])
        # the installed server really runs
        r = self.job("START_INSTANCE", {"waitReady": True})
        self.assertEqual(r.code, 0, r)
        self.assertEqual(r.result["output"]["state"], "RUNNING")
        r = self.job("STOP_INSTANCE", {})
        self.assertEqual(r.code, 0, r)
        # the same install again is a no-op that downloads nothing
        r = self.job("INSTALL_SERVER", self.install_params(validate=True))
        self.assertEqual(r.code, 0, r)
        self.assertTrue(r.result["output"]["alreadyInstalled"])
        self.assertEqual(len(self.fetches()), 12)

    def test_update_to_a_beta_branch_with_its_password_and_activate(self):
        self.fixture({"branches": {"beta": {"server": {"copy": DEMO, "mode": 0o755},
                                            "BETA": {"text": "yes\n"}}},
                      "beta_password": "letmein"})
        r = self.job("INSTALL_SERVER", self.install_params())
        self.assertEqual(r.code, 0, r)
        bad = {"source": {"steam": {"appId": APP, "branch": "beta", "betaPassword": "nope"}}, "build": "b2",
               "activate": True}
        r = self.job("UPDATE_SERVER", bad)
        self.assertEqual(r.code, 1, r)
        self.assertIn("Invalid beta password", r.error_message)
        self.assertFalse(r.result["error"]["retryable"])
        good = {"source": {"steam": {"appId": APP, "branch": "beta", "betaPassword": "letmein"}}, "build": "b2",
                "activate": True}
        r = self.job("UPDATE_SERVER", good)
        self.assertEqual(r.code, 0, r)
        self.assertEqual(r.result["output"]["activated"], True)
        inst = self.instance_dir()
        self.assertEqual(os.readlink(os.path.join(inst, "current")), "builds/b2")
        self.assertTrue(os.path.exists(os.path.join(inst, "builds", "b2", "BETA")))
        self.assertFalse(os.path.exists(os.path.join(inst, "builds", "b1", "BETA")))


class SteamFailures(SteamCase):
    def assertFailedClean(self, r, needle, retryable):
        self.assertEqual(r.code, 1, r)
        self.assertIn(needle, r.error_message)
        self.assertEqual(r.result["error"]["retryable"], retryable, r.result)
        inst = self.instance_dir()
        self.assertFalse(os.path.exists(os.path.join(inst, "builds", "b1")))
        self.assertFalse(os.path.lexists(os.path.join(inst, "current")))

    def test_no_subscription_is_not_retryable(self):
        self.fixture({"fail": "No subscription"})
        r = self.job("INSTALL_SERVER", self.install_params())
        self.assertFailedClean(r, "SteamCMD could not install app 896660: No subscription", False)

    def test_unknown_app_reads_as_no_subscription(self):
        r = self.job("INSTALL_SERVER", {"source": {"steam": {"appId": "12345"}}, "build": "b1",
                                        "instance": default_spec()})
        self.assertFailedClean(r, "app 12345: No subscription", False)

    def test_disk_full_midway_is_not_retryable(self):
        self.fixture({"fail": "Disk write failure", "fail_after_chunks": 4})
        r = self.job("INSTALL_SERVER", self.install_params())
        self.assertFailedClean(r, "Disk write failure (the disk is full or not writable)", False)

    def test_rate_limited_login_is_retryable(self):
        self.fixture({"login_fail": "Rate Limit Exceeded"})
        r = self.job("INSTALL_SERVER", self.install_params())
        self.assertFailedClean(r, "SteamCMD login failed: Rate Limit Exceeded", True)

    def test_bad_params_fail_before_anything_runs(self):
        cases = [
            ({"appId": "abc"}, "appId must be a Steam app id"),
            ({"appId": APP, "login": "bob smith"}, "must be \"anonymous\" or a Steam account name"),
            ({"appId": APP, "platform": "amiga"}, "platform must be linux, windows or macos"),
            ({"appId": APP, "branch": "x y"}, "branch must be a branch name"),
            ({"appId": APP, "password": "x"}, "unknown field 'password' in source.steam"),
        ]
        for steam, needle in cases:
            with self.subTest(steam=steam):
                r = self.job("INSTALL_SERVER", {"source": {"steam": steam}, "build": "b1",
                                                "instance": default_spec()})
                self.assertFailedClean(r, needle, False)
        self.assertEqual(self.fetches(), [])

    def test_without_the_steamcmd_setting_it_says_so(self):
        with open(self.conf, "w") as f:
            f.write("")
        r = self.job("INSTALL_SERVER", self.install_params())
        self.assertFailedClean(r, "set the agent setting steamcmd", False)


class SteamLogin(SteamCase):
    def creds(self, text, mode=0o600):
        path = os.path.join(self.tmp, "steam.creds")
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)
        with open(self.conf, "a") as f:
            f.write(f"steam_credentials_file = {path}\n")

    def test_an_account_login_takes_its_password_from_the_agent_file_only(self):
        self.fixture({}, accounts={"bob": "s3cr3t-pw"})
        self.creds("# account password\nalice other\nbob s3cr3t-pw\n")
        r = self.job("INSTALL_SERVER", self.install_params(login="bob"))
        self.assertEqual(r.code, 0, r)
        with open(os.path.join(self.bin, "steamcmd.log")) as f:
            log = f.read()
        self.assertIn('"+runscript", "/proc/self/fd/4"', log)  # a memfd, not a file
        self.assertNotIn("s3cr3t-pw", log)             # never on SteamCMD's command line
        self.assertNotIn("s3cr3t-pw", r.stdout + r.stderr)  # nor in events, logs or the result
        inst = self.instance_dir()
        for dirpath, _, files in os.walk(inst):
            for name in files:
                with open(os.path.join(dirpath, name), "rb") as f:
                    self.assertNotIn(b"s3cr3t-pw", f.read(), os.path.join(dirpath, name))

    def test_missing_account_wrong_password_and_loose_file_mode(self):
        self.fixture({}, accounts={"bob": "right"})
        self.creds("bob wrong\n")
        r = self.job("INSTALL_SERVER", self.install_params(login="alice"))
        self.assertEqual(r.code, 1, r)
        self.assertIn("no credentials for Steam account 'alice'", r.error_message)
        r = self.job("INSTALL_SERVER", self.install_params(login="bob"))
        self.assertEqual(r.code, 1, r)
        self.assertIn("SteamCMD login failed: Invalid Password", r.error_message)
        self.assertFalse(r.result["error"]["retryable"])
        os.chmod(os.path.join(self.tmp, "steam.creds"), 0o644)
        r = self.job("INSTALL_SERVER", self.install_params(login="bob"))
        self.assertEqual(r.code, 1, r)
        self.assertIn("chmod 600", r.error_message)


class SteamRetry(SteamCase):
    def test_retry_after_kill_9_continues_the_partial_download(self):
        self.fixture({"chunks": 40, "delay": 0.1})
        p = self.start_job("INSTALL_SERVER", params=self.install_params(), extra=["--config", self.conf])
        child = self.wait_child(p)
        deadline = time.time() + 60
        while len(self.fetches()) < 8 and time.time() < deadline:
            time.sleep(0.05)
        self.assertGreaterEqual(len(self.fetches()), 8)
        os.kill(child, signal.SIGKILL)
        self.finish(p)
        first = len(self.fetches())
        self.assertLess(first, 40)
        r = self.job("INSTALL_SERVER", self.install_params())
        self.assertEqual(r.code, 0, r)
        self.assertTrue(any("continuing the SteamCMD download" in (e.get("message") or "") for e in r.events),
                        [e.get("message") for e in r.events])
        got = self.fetches()
        # every chunk fetched once in all: the retry fetched only what the killed run had not
        self.assertEqual(sorted(got, key=int), [str(i) for i in range(40)])
        inst = self.instance_dir()
        self.assertEqual(os.readlink(os.path.join(inst, "current")), "builds/b1")
        self.assertEqual(os.listdir(os.path.join(inst, ".jobvisor", "staging")), [])


if __name__ == "__main__":
    unittest.main()
