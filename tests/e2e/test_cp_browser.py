"""jobvisor-cp web page in headless Chromium, driven over the DevTools protocol.

The page is opened once; then a job is created over HTTP and run by a
hand-played agent. The test asserts that the page shows the job, its progress
bar, percent and step message, and its final state as they happen — without a
reload (a marker set on the window at the start must survive) — and that the
page's own create form, Log and Cancel buttons work. Skipped only when the
chromium binary is not installed.
"""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import unittest
import urllib.request

from cp_harness import ADMIN_TOKEN, ControlPlane
from cp_ws import WebSocket

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class DevTools:
    """The few DevTools calls the test needs, over cp_ws."""

    def __init__(self, ws_url):
        self.ws = WebSocket(ws_url, timeout=30)
        self.next_id = 0

    def call(self, method, params=None, timeout=30):
        self.next_id += 1
        my = self.next_id
        self.ws.send_json({"id": my, "method": method, "params": params or {}})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = self.ws.recv_json(timeout=max(0.1, deadline - time.monotonic()))
            if m.get("id") == my:
                if "error" in m:
                    raise AssertionError("%s failed: %r" % (method, m["error"]))
                return m.get("result", {})
        raise AssertionError("%s: no answer" % method)

    def eval(self, expr):
        r = self.call("Runtime.evaluate", {"expression": expr, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in r:
            raise AssertionError("page exception: %r" % r["exceptionDetails"])
        return r["result"].get("value")

    def wait_for(self, expr, timeout=20, what=None):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = self.eval(expr)
            if last:
                return last
            time.sleep(0.1)
        raise AssertionError("page never showed %s (last value %r)" % (what or expr, last))

    def close(self):
        self.ws.close()


ROW_STATE = """(() => {
  const tr = document.querySelector('tr[data-job-id="%s"]');
  if (!tr) return null;
  return { status: tr.querySelector('.status').textContent,
           pct: tr.querySelector('.pct').textContent,
           width: tr.querySelector('.bar').style.width,
           msg: tr.querySelector('.msg').textContent,
           text: tr.textContent };
})()"""


@unittest.skipIf(CHROMIUM is None, "chromium is not installed (apt-get install chromium)")
class Browser(unittest.TestCase):
    def setUp(self):
        self.cp = ControlPlane().start()
        self.addCleanup(self.cp.close)
        self.profile = tempfile.TemporaryDirectory(prefix="jvcp-chromium-", ignore_cleanup_errors=True)
        self.addCleanup(self.profile.cleanup)
        self.chrome = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", "--user-data-dir=" + self.profile.name,
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            start_new_session=True)  # its own process group: renderers and helpers go with it
        self.addCleanup(self.stop_chrome)
        port = self.devtools_port()
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
                "http://127.0.0.1:%d/json/list" % port, timeout=10) as r:
            targets = json.loads(r.read().decode())
        page = next(t for t in targets if t["type"] == "page")
        self.dt = DevTools(page["webSocketDebuggerUrl"])
        self.addCleanup(self.dt.close)

    def devtools_port(self):
        path = os.path.join(self.profile.name, "DevToolsActivePort")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.chrome.poll() is not None:
                self.fail("chromium exited with %s" % self.chrome.returncode)
            try:
                with open(path) as f:
                    first = f.readline().strip()
                if first:
                    return int(first)
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        self.fail("chromium did not open its DevTools port")

    def stop_chrome(self):
        pgid = self.chrome.pid  # session leader: its pid is the group id
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.chrome.wait(15)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(pgid, signal.SIGKILL)  # whatever of the group is left
        except ProcessLookupError:
            pass
        self.chrome.wait(10)

    def test_page_shows_live_progress_and_final_state_without_reload(self):
        dt, cp = self.dt, self.cp
        dt.call("Page.enable")
        dt.call("Page.navigate", {"url": cp.url + "/#token=" + ADMIN_TOKEN})
        dt.wait_for("document.getElementById('conn') && document.getElementById('conn').textContent === 'live'",
                    what="a live WebSocket")
        self.assertEqual(dt.eval("location.hash"), "", "the token is removed from the URL")
        dt.eval("window.__noReload = 'still-here'")
        dt.wait_for("document.querySelector('tr[data-agent-id=\"%s\"]') !== null" % cp.default_agent,
                    what="the agents list")

        job = cp.create_job(instance="mc-world", params={"backupId": "nightly"})
        jid = job["jobId"]
        dt.wait_for("(%s) && (%s).status === 'QUEUED'" % (ROW_STATE % jid, ROW_STATE % jid), what="the new job")

        agent = cp.agent()
        [a] = agent.take()
        agent.progress(a, 37, "copying world files")
        row = dt.wait_for("(() => { const r = %s; return r && r.pct === '37%%' ? r : null; })()" % (ROW_STATE % jid),
                          what="37% progress")
        self.assertEqual(row["status"], "RUNNING")
        self.assertEqual(row["width"], "37%")
        self.assertEqual(row["msg"], "copying world files")

        agent.progress(a, 81, "compressing")
        row = dt.wait_for("(() => { const r = %s; return r && r.pct === '81%%' ? r : null; })()" % (ROW_STATE % jid),
                          what="81% progress")
        self.assertEqual(row["msg"], "compressing")

        # The run's event log, requested over the WebSocket by the Log button.
        dt.eval("document.querySelector('tr[data-job-id=\"%s\"] button:last-child').click()" % jid)
        log = dt.wait_for("(() => { const t = document.getElementById('log').textContent;"
                          " return t.includes('compressing') ? t : null; })()", what="the event log")
        self.assertIn("copying world files", log)

        agent.progress(a, 100, "done")
        self.assertEqual(agent.result(a["jobRunId"], "COMPLETED", output={"backupId": "nightly"}).status, 200)
        row = dt.wait_for("(() => { const r = %s; return r && r.status === 'COMPLETED' ? r : null; })()"
                          % (ROW_STATE % jid), what="COMPLETED")
        self.assertEqual(row["pct"], "100%")
        # Live log lines arrived too, and the page never reloaded.
        self.assertIn("done", dt.eval("document.getElementById('log').textContent"))
        self.assertEqual(dt.eval("window.__noReload"), "still-here")

    def test_create_form_and_cancel_button(self):
        dt, cp = self.dt, self.cp
        dt.call("Page.navigate", {"url": cp.url + "/#token=" + ADMIN_TOKEN})
        dt.wait_for("document.getElementById('conn') && document.getElementById('conn').textContent === 'live'",
                    what="a live WebSocket")
        dt.wait_for("document.querySelectorAll('#c-agent option').length > 0", what="agent choices")
        dt.eval("""(() => {
            document.getElementById('c-type').value = 'RESTART_INSTANCE';
            document.getElementById('c-agent').value = '%s';
            document.getElementById('c-inst').value = 'from-the-page';
            document.getElementById('c-params').value = '{"timeoutSeconds": 30}';
            document.querySelector('#create button[type=submit]').click();
        })()""" % cp.default_agent)
        created = dt.wait_for("(() => { const t = document.getElementById('c-result').textContent;"
                              " return t.startsWith('created ') ? t.slice(8) : null; })()", what="created")
        j = cp.job(created)
        self.assertEqual(j["type"], "RESTART_INSTANCE")
        self.assertEqual(j["instanceId"], "from-the-page")
        self.assertEqual(j["params"], {"timeoutSeconds": 30})
        dt.wait_for("document.querySelector('tr[data-job-id=\"%s\"]') !== null" % created, what="the row")
        # Bad input is reported on the page, not swallowed.
        dt.eval("document.getElementById('c-inst').value = 'ok'; document.getElementById('c-type').value = 'NOPE_TYPE';"
                "document.querySelector('#create button[type=submit]').click()")
        err = dt.wait_for("(() => { const t = document.getElementById('c-result').textContent;"
                          " return t.includes('unknown job type') ? t : null; })()", what="the error")
        self.assertIn("NOPE_TYPE", err)
        # Cancel from the page: queued, so it is cancelled at once.
        dt.eval("[...document.querySelectorAll('tr[data-job-id=\"%s\"] button')]"
                ".find(b => b.textContent === 'Cancel').click()" % created)
        dt.wait_for("(() => { const r = %s; return r && r.status === 'CANCELLED'; })()" % (ROW_STATE % created),
                    what="CANCELLED")
        self.assertEqual(cp.job(created)["status"], "CANCELLED")


if __name__ == "__main__":
    unittest.main()
