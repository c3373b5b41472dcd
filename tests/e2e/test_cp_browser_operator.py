"""The operator views of the jobvisor-cp page in headless Chromium: a job's
own page (#/jobs/{id}: runs, events with times and durations, the output
pretty-printed, the error and retry history), the schedules view (next firing
shown, create, pause), the audit log, job list filters and paging beyond the
newest 300, the agent's run count, one "job cancelled" per row, a corrected
#token= pasted into the same tab, keyboard use, and both a 1280 px and a
phone-width layout. Screenshots of each view are kept in JV_ARTIFACTS_DIR
(default: build/test-artifacts) and their content asserted through the DOM."""
import base64
import json
import os
import time
import unittest

from cp_harness import ADMIN_TOKEN
import test_cp_browser

CHROMIUM = test_cp_browser.CHROMIUM
ART = os.environ.get("JV_ARTIFACTS_DIR") or os.path.join(
    os.environ.get("JV_BUILD_DIR") or os.path.join(os.path.dirname(__file__), "..", "..", "build"), "test-artifacts")


@unittest.skipIf(CHROMIUM is None, "chromium is not installed (apt-get install chromium)")
class OperatorPage(test_cp_browser.Browser):
    test_page_shows_live_progress_and_final_state_without_reload = None
    test_create_form_and_cancel_button = None

    def shot(self, name, width=1280, height=900, mobile=False):
        self.dt.call("Emulation.setDeviceMetricsOverride",
                     {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile})
        time.sleep(0.3)
        png = base64.b64decode(self.dt.call("Page.captureScreenshot", {"format": "png"})["data"])
        os.makedirs(ART, exist_ok=True)
        path = os.path.join(ART, "cp-%s.png" % name)
        with open(path, "wb") as f:
            f.write(png)
        self.assertGreater(len(png), 5000, path)
        return path

    def open(self, hash_):
        self.dt.eval("location.hash = %s" % json.dumps(hash_))

    def text(self, sel):
        return self.dt.eval("(() => { const e = document.querySelector(%s); return e ? e.innerText : null; })()" % json.dumps(sel))

    @staticmethod
    def progress(agent, a, percent, message, status="RUNNING"):
        """An event stamped with the real time (the harness's are fixed)."""
        seq = agent.seq.get(a["jobRunId"], 0) + 1
        agent.seq[a["jobRunId"]] = seq
        now = time.time()
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + ".%03dZ" % int(now % 1 * 1000)
        r = agent.events(a["jobRunId"], [{"seq": seq, "kind": "progress", "jobId": a["jobId"], "jobRunId": a["jobRunId"],
                                          "instanceId": a["instanceId"], "status": status, "percent": percent,
                                          "message": message, "timestamp": ts}])
        assert r.status == 200, r

    def run_job(self, agent, output=None, fail=None, cancel=False, type_="BACKUP_INSTANCE", inst="mc-1", **extra):
        job = self.cp.create_job(instance=inst, type_=type_, **extra)
        [a] = agent.take()
        self.progress(agent, a, 10, "snapshotting world")
        time.sleep(1.2)
        self.progress(agent, a, 60, "compressing region files")
        if fail:
            agent.result(a["jobRunId"], "FAILED", error={"message": fail, "retryable": True, "reason": "io"})
        elif cancel:
            self.progress(agent, a, 60, "job cancelled", status="CANCELLED")
            agent.result(a["jobRunId"], "CANCELLED", error={"message": "job cancelled", "retryable": False})
        else:
            self.progress(agent, a, 100, "done")
            agent.result(a["jobRunId"], "COMPLETED", output=output)
        return job, a

    def test_views(self):
        dt, cp = self.dt, self.cp
        dt.call("Page.enable")
        # A wrong token first; the corrected #token= is pasted into the same tab (hashchange).
        dt.call("Page.navigate", {"url": cp.url + "/#token=wrong-token-0123456789"})
        dt.wait_for("document.getElementById('login') && !document.getElementById('login').classList.contains('hidden')",
                    what="the token prompt")
        self.open("#token=" + ADMIN_TOKEN)
        dt.wait_for("document.getElementById('conn').textContent === 'live'", what="live after the corrected token")
        self.assertEqual(dt.eval("location.hash"), "")

        agent = cp.agent()
        # A job that failed once and then completed: retry history and output.
        job, a1 = self.run_job(agent, fail="disk full while writing", maxAttempts=2)
        time.sleep(5.5)  # the retry backoff (5 s)
        [a2] = agent.take()
        self.assertEqual(a2["attempt"], 2)
        self.progress(agent, a2, 50, "copying again")
        self.progress(agent, a2, 100, "done")
        agent.result(a2["jobRunId"], "COMPLETED", output={"backupId": "20261202T0400Z", "bytes": 123456,
                                                          "files": 42, "sha256": "ab" * 32})
        self.open("#/jobs/" + job["jobId"])
        dt.wait_for("(document.querySelector('#jd .output') || {}).innerText", what="the output on the job page")
        out = self.text("#jd .output")
        self.assertIn('"backupId": "20261202T0400Z"', out, "pretty-printed, one member a line")
        self.assertIn('\n  "bytes": 123456', out)
        page = self.text("#jd")
        self.assertIn("Attempt 1 — FAILED", page)
        self.assertIn("disk full while writing [io] (retryable)", page)
        self.assertIn("Attempt 2 — COMPLETED", page)
        self.assertIn("compressing region files", page)
        self.assertIn("Attempts\n2 of 2", page)
        self.assertRegex(page, r"\t\+1\.\ds\tprogress\tRUNNING\t60\tcompressing region files")  # 1.2 s apart
        self.assertRegex(page, r"Started\n20\d\d-\d\d-\d\d \d\d:\d\d:\d\d UTC")
        self.shot("job-detail")
        self.shot("job-detail-phone", 390, 844, mobile=True)
        self.assertLessEqual(dt.eval("document.documentElement.scrollWidth"), 390 + 1, "no sideways scrolling of the page")

        # The list: times and durations, search by id, filters, a cancelled job says so once.
        cjob, _ = self.run_job(agent, cancel=True, inst="mc-2")
        self.open("#/jobs")
        row = "tr[data-job-id=\"%s\"]" % cjob["jobId"]
        dt.wait_for("(() => { const r = document.querySelector(%s); return r && r.innerText.includes('CANCELLED'); })()"
                    % json.dumps(row), what="the cancelled row")
        self.assertEqual(self.text(row).count("job cancelled"), 1, self.text(row))
        self.assertIn("took ", self.text("tr[data-job-id=\"%s\"]" % job["jobId"]))
        dt.eval("document.getElementById('f-inst').value = 'mc-2'; document.querySelector('#jobfilter button').click()")
        dt.wait_for("document.querySelectorAll('#jobs tr').length === 1", what="the filtered list")
        dt.eval("document.getElementById('f-inst').value = ''; document.getElementById('f-id').value = %s;"
                "document.querySelector('#jobfilter button').click()" % json.dumps(job["jobId"]))
        dt.wait_for("location.hash === %s" % json.dumps("#/jobs/" + job["jobId"]), what="search by id")
        self.open("#/jobs")
        dt.eval("document.getElementById('f-id').value = ''; document.querySelector('#jobfilter button').click()")

        # Paging beyond the newest 300.
        for i in range(320):
            cp.create_job(instance="bulk-%d" % (i % 7), type_="VERIFY_BACKUP")
        dt.wait_for("document.querySelectorAll('#jobs tr').length >= 300", what="300 rows")
        self.assertEqual(dt.eval("document.querySelectorAll('#jobs tr').length"), 300)
        dt.eval("document.getElementById('older').click()")
        dt.wait_for("document.querySelectorAll('#jobs tr').length > 300", what="older jobs loaded")
        self.assertIn(job["jobId"], dt.eval("document.getElementById('jobs').innerText"), "the oldest job is reachable")

        # The agent's running count follows the job list at once.
        agent2 = cp.agent(cp.second_agent)
        cp.create_job(agent=cp.second_agent, instance="x1")
        [b] = agent2.take()
        self.progress(agent2, b, 5, "starting")
        dt.wait_for("(document.querySelector('tr[data-agent-id=\"%s\"] .runs') || {}).textContent === '1 / 1'"
                    % cp.second_agent, what="the agent's run count")
        self.shot("jobs")
        self.shot("jobs-phone", 390, 844, mobile=True)
        self.assertLessEqual(dt.eval("document.documentElement.scrollWidth"), 390 + 1, "tables scroll, not the page")

        # Schedules: the next firing shown; create, pause from the page with the keyboard.
        r = cp.api("POST", "/v1/schedules", {"cron": "0 4 * * *", "timezone": "Europe/Berlin",
                                             "job": {"type": "BACKUP_INSTANCE", "agentId": cp.default_agent,
                                                     "instanceId": "mc-1"}})
        self.assertEqual(r.status, 201)
        nxt = r.json["nextFireAt"].replace("T", " ").replace(".000Z", " UTC")
        self.open("#/schedules")
        srow = "tr[data-schedule-id=\"%s\"]" % r.json["scheduleId"]
        dt.wait_for("!!document.querySelector(%s)" % json.dumps(srow + " .next"), what="the schedule row")
        self.assertEqual(self.text(srow + " .next"), nxt)
        self.assertIn("never", self.text(srow + " .last"))
        dt.wait_for("document.getElementById('s-preview').innerText.startsWith('next: ')", what="the cron preview")
        dt.eval("document.getElementById('s-cron').value = '30 2 * * *'; document.getElementById('s-inst').value = 'mc-9';"
                "document.querySelector('#s-create button').click()")
        dt.wait_for("document.getElementById('schedules').innerText.includes('30 2 * * *')", what="the created schedule")
        dt.eval("document.querySelector(%s + ' button').focus()" % json.dumps(srow))
        self.assertEqual(dt.eval("document.activeElement.textContent"), "Pause")
        dt.call("Input.dispatchKeyEvent", {"type": "keyDown", "key": "Enter", "code": "Enter", "text": "\r",
                                           "windowsVirtualKeyCode": 13})
        dt.call("Input.dispatchKeyEvent", {"type": "keyUp", "key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13})
        dt.wait_for("(document.querySelector(%s) || {}).innerText === 'paused'" % json.dumps(srow + " .next"),
                    what="paused by the keyboard")
        self.assertFalse(cp.api("GET", "/v1/schedules/" + r.json["scheduleId"]).json["enabled"])
        self.assertEqual(dt.eval("document.activeElement.textContent"), "Resume", "the focus stays on the button")
        self.shot("schedules")
        self.shot("schedules-phone", 390, 844, mobile=True)
        self.assertLessEqual(dt.eval("document.documentElement.scrollWidth"), 390 + 1)

        # The audit log shows the page's own changes.
        self.open("#/audit")
        dt.wait_for("document.getElementById('audit').innerText.includes('PATCH /v1/schedules/')", what="the audit entry")
        self.assertIn("admin (admin)", self.text("#audit"))
        self.shot("audit")

        # #/instances/{agent}/{instance} opens that instance's console.
        self.open("#/instances/%s/mc-1" % cp.default_agent)
        dt.wait_for("!document.getElementById('consolebox').classList.contains('hidden')", what="the console")
        self.assertEqual(self.text("#consolename"), "%s / mc-1" % cp.default_agent)


if __name__ == "__main__":
    unittest.main()
