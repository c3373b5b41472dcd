"""The instances view of the jobvisor-cp page in headless Chromium, with a real
agent and a real demo server: a crash appears without a reload, a command
typed in the page's console reaches the server and its answer shows up, and
console text is shown as text (no HTML, no escape codes)."""
import os
import shutil
import signal
import subprocess
import tempfile
import unittest

from agent_harness import agent_env
from cp_harness import ADMIN_TOKEN, AGENT_TOKENS
from instance_helpers import DEMO, JOBVISOR, Instance, default_spec
import test_cp_browser

CHROMIUM = test_cp_browser.CHROMIUM

JOBVISOR_BIN = os.environ.get("JOBVISOR_BIN", "jobvisor")

INSTANCE_ROW = """(() => {
  const tr = document.querySelector('tr[data-instance="agent-1/s1"]');
  if (!tr) return null;
  return { state: tr.querySelector('.state').textContent, restarts: tr.querySelector('.restarts').textContent,
           uptime: tr.querySelector('.uptime').textContent, text: tr.textContent };
})()"""


@unittest.skipIf(CHROMIUM is None, "chromium is not installed (apt-get install chromium)")
@unittest.skipUnless(JOBVISOR and DEMO, "needs JOBVISOR_BIN and JV_DEMO_SERVER_BIN")
class InstancesPage(test_cp_browser.Browser):
    # Chromium and DevTools set-up come from the jobs page test; its tests stay there.
    test_page_shows_live_progress_and_final_state_without_reload = None
    test_create_form_and_cancel_button = None

    def setUp(self):
        super().setUp()
        self.tmp = tempfile.mkdtemp(prefix="jv-ui-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        data = os.path.join(self.tmp, "data")
        os.makedirs(data)
        tok = os.path.join(self.tmp, "token")
        fd = os.open(tok, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, (AGENT_TOKENS["agent-1"] + "\n").encode())
        os.close(fd)
        self.inst = Instance(self, data_dir=data, spec=default_spec(
            restart={"policy": "on-failure", "backoffSeconds": 1.5}))
        self.assertTrue(self.inst.start().startswith("ok started"))
        self.inst.wait_state("RUNNING")
        env = agent_env(self.cp.url, tok, data, self.tmp, STATS_INTERVAL="0.5", POLL_WAIT="20",
                        LOG_LEVEL="info")
        self.agent_log = os.path.join(self.tmp, "agent.log")
        with open(self.agent_log, "w") as logf:
            self.agent = subprocess.Popen([JOBVISOR_BIN, "agent"], env=env, stdout=logf, stderr=logf,
                                          stdin=subprocess.DEVNULL, start_new_session=True)
        self.addCleanup(self.stop_agent)

    def stop_agent(self):
        if self.agent.poll() is None:
            self.agent.send_signal(signal.SIGTERM)
            try:
                self.agent.wait(20)
            except subprocess.TimeoutExpired:
                self.agent.kill()
                self.agent.wait(10)

    def test_crash_command_and_untrusted_console_text(self):
        dt = self.dt
        dt.call("Page.enable")
        dt.call("Page.navigate", {"url": self.cp.url + "/#token=" + ADMIN_TOKEN})
        dt.wait_for("document.readyState === 'complete' && document.getElementById('conn').textContent === 'live'",
                    what="the page connected")
        dt.eval("window.__marker = 42")
        row = dt.wait_for(INSTANCE_ROW.replace("return {", "const r = {").replace(
            "text: tr.textContent };", "text: tr.textContent }; return r.state === 'RUNNING' ? r : null;"),
            timeout=20, what="s1 RUNNING")
        self.assertEqual(row["restarts"], "0")
        dt.wait_for("document.querySelector('tr[data-instance=\"agent-1/s1\"] svg.spark polyline') !== null",
                    timeout=20, what="a sparkline")
        # A crash appears without a reload.
        pid = self.inst.status()["pid"]
        os.kill(pid, signal.SIGKILL)
        dt.wait_for("(() => { const t = document.querySelector('tr[data-instance=\"agent-1/s1\"] .state');"
                    " return t && (t.textContent === 'CRASHED' || t.textContent === 'BACKOFF'); })()",
                    timeout=5, what="the crash")
        dt.wait_for("(() => { const t = document.querySelector('tr[data-instance=\"agent-1/s1\"]');"
                    " return t && t.querySelector('.state').textContent === 'RUNNING' &&"
                    " t.querySelector('.restarts').textContent === '1'; })()",
                    timeout=20, what="restarted with 1 restart")
        self.assertEqual(dt.eval("window.__marker"), 42)
        # The console: open it, type a command, see the answer.
        dt.eval("document.querySelector('tr[data-instance=\"agent-1/s1\"] button').click()")
        dt.wait_for("document.getElementById('console').textContent.includes('Done (')", timeout=20,
                    what="the console tail")
        dt.eval("document.getElementById('console-line').value = 'say hello from the page'")
        dt.eval("document.getElementById('console-form').requestSubmit()")
        dt.wait_for("document.getElementById('console').textContent.includes('[Server] hello from the page')",
                    timeout=15, what="the command's answer in the console pane")
        # Untrusted text: HTML stays text, escape codes are stripped.
        self.inst.call({"op": "send", "line": "say <img src=x onerror=window.__pwned=1><b>bold</b> \x1b[31mred\x1b[0m"})
        dt.wait_for("document.getElementById('console').textContent.includes('<b>bold</b>')", timeout=15,
                    what="the markup shown as text")
        self.assertIsNone(dt.eval("window.__pwned === undefined ? null : window.__pwned"))
        self.assertEqual(dt.eval("document.querySelectorAll('#console img, #console b').length"), 0)
        self.assertTrue(dt.eval("document.getElementById('console').textContent.includes('red')"))
        self.assertFalse(dt.eval("document.getElementById('console').textContent.includes('\\u001b')"))


if __name__ == "__main__":
    unittest.main()
