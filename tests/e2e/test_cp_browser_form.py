"""The create form of the jobvisor-cp page builds itself from the job types a
real agent reported (headless Chromium, real jobvisor-cp, real jobvisor agent):
one labelled input per parameter, the description and the cancellable flag
shown, a missing required parameter or a bad JSON value refused in the page
before anything is sent, the created job carrying exactly the typed params,
the server's did-you-mean 400 shown next to the form in the raw-JSON mode, raw
JSON for an agent that never reported, keyboard use and a 390 px layout.
Screenshots in JV_ARTIFACTS_DIR (default build/test-artifacts)."""
import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

from agent_harness import JOBVISOR, agent_env
from cp_harness import ADMIN_TOKEN, AGENT_TOKENS
import test_cp_browser
import test_cp_browser_operator

CHROMIUM = test_cp_browser.CHROMIUM
ART = test_cp_browser_operator.ART

ROW = "#c-fields .param[data-param=%s]"


@unittest.skipIf(CHROMIUM is None, "chromium is not installed (apt-get install chromium)")
@unittest.skipUnless(JOBVISOR, "needs JOBVISOR_BIN")
class CreateForm(test_cp_browser.Browser):
    test_page_shows_live_progress_and_final_state_without_reload = None
    test_create_form_and_cancel_button = None

    def setUp(self):
        super().setUp()
        self.tmp = tempfile.mkdtemp(prefix="jv-form-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        data, jobs = os.path.join(self.tmp, "data"), os.path.join(self.tmp, "jobs")
        self.jobs_dir = jobs
        os.makedirs(data)
        os.makedirs(jobs)
        tok = os.path.join(self.tmp, "token")
        fd = os.open(tok, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, (AGENT_TOKENS[self.cp.default_agent] + "\n").encode())
        os.close(fd)
        self.log_path = os.path.join(self.tmp, "agent.log")
        env = agent_env(self.cp.url, tok, data, jobs, agent_id=self.cp.default_agent, LOG_LEVEL="info")
        with open(self.log_path, "w") as logf:
            self.proc = subprocess.Popen([JOBVISOR, "agent"], env=env, stdout=logf, stderr=logf,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        self.addCleanup(self.stop_agent)

    def stop_agent(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        with open(self.log_path, errors="replace") as f:
            log = f.read()
        for bad in ("AddressSanitizer", "LeakSanitizer", "runtime error:"):
            self.assertNotIn(bad, log)

    # ---- page helpers ----
    def js(self, expr):
        return self.dt.eval(expr)

    def text(self, sel):
        return self.js("(() => { const e = document.querySelector(%s); return e ? e.innerText : null; })()" % json.dumps(sel))

    def focus(self, sel):
        self.js("document.querySelector(%s).focus()" % json.dumps(sel))
        self.assertTrue(self.js("document.activeElement === document.querySelector(%s)" % json.dumps(sel)), sel)

    def type_into(self, sel, text):
        """Focus, select what is there, type text (real input events)."""
        self.focus(sel)
        self.js("document.activeElement.select ? document.activeElement.select() : null")
        if text:
            self.dt.call("Input.insertText", {"text": text})
        else:
            self.key("Backspace", 8)

    def key(self, key, code, text=None, name=None):
        name = name or key
        down = {"type": "keyDown", "key": key, "code": name, "windowsVirtualKeyCode": code}
        if text:
            down["text"] = text
        self.dt.call("Input.dispatchKeyEvent", down)
        self.dt.call("Input.dispatchKeyEvent", {"type": "keyUp", "key": key, "code": name, "windowsVirtualKeyCode": code})

    @staticmethod
    def expected_fields(params):
        """name:TAG of each field the page should build, required first, then by name."""
        def tag(p):
            if p["type"] == "boolean":
                return "INPUT" if p["required"] else "SELECT"
            return "INPUT" if p["type"] in ("string", "number", "integer") else "TEXTAREA"
        order = sorted(params, key=lambda n: (not params[n]["required"], n.lower()))
        return ["%s:%s" % (n, tag(params[n])) for n in order]

    def choose_agent(self, agent):
        self.js("{ const s = document.getElementById('c-agent'); s.value = %s; s.dispatchEvent(new Event('change')); }"
                % json.dumps(agent))

    def jobs(self):
        r = self.cp.api("GET", "/v1/jobs?limit=200")
        self.assertEqual(r.status, 200, r)
        return r.json["jobs"]

    def shot(self, name, width, height, mobile, clip_sel=None):
        self.dt.call("Emulation.setDeviceMetricsOverride",
                     {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile})
        self.js("document.getElementById('create').scrollIntoView({block: 'start'})")
        time.sleep(0.3)
        params = {"format": "png"}
        if clip_sel:
            r = self.js("(() => { const b = document.querySelector(%s).getBoundingClientRect();"
                        " return {x: b.left + scrollX, y: b.top + scrollY, width: b.width, height: b.height, scale: 1}; })()"
                        % json.dumps(clip_sel))
            params["clip"] = r
        png = base64.b64decode(self.dt.call("Page.captureScreenshot", params)["data"])
        os.makedirs(ART, exist_ok=True)
        path = os.path.join(ART, "cp-%s.png" % name)
        with open(path, "wb") as f:
            f.write(png)
        self.assertGreater(len(png), 3000, path)

    def test_form_from_reported_schema(self):
        dt, cp = self.dt, self.cp
        # The real agent reports its types first (the page reads them when it lists the agent).
        deadline = time.monotonic() + 30
        while True:
            got = cp.api("GET", "/v1/agents/%s/job-types" % cp.default_agent).json
            if got["reported"]:
                break
            if time.monotonic() > deadline:
                with open(self.log_path, errors="replace") as f:
                    self.fail("the agent never reported its job types:\n" + f.read()[-2000:])
            time.sleep(0.1)
        by = {t["type"]: t for t in got["jobTypes"]}
        self.assertEqual(by["VERIFY_BACKUP"]["params"]["backupId"], {"type": "string", "required": True})

        dt.call("Page.enable")
        dt.call("Page.navigate", {"url": cp.url + "/#token=" + ADMIN_TOKEN})
        dt.wait_for("(document.getElementById('conn') || {}).textContent === 'live'", what="a live page")
        dt.wait_for("Array.from(document.getElementById('c-agent').options).some(o => o.value === %s)"
                    % json.dumps(cp.default_agent), what="the agent in the form")
        self.choose_agent(cp.default_agent)
        # BACKUP_INSTANCE is the default type: its fields are there once the schema arrived.
        dt.wait_for("!!document.querySelector(%s)" % json.dumps(ROW % "backupId"), what="the generated backupId field")

        # An agent that never reported: raw JSON, no field, no toggle, and the page says why.
        self.choose_agent(cp.second_agent)
        dt.wait_for("document.getElementById('c-about').innerText.includes('has not reported')", what="the no-schema note")
        self.assertTrue(self.js("document.getElementById('c-fields').classList.contains('hidden')"))
        self.assertTrue(self.js("document.getElementById('c-rawtoggle').classList.contains('hidden')"))
        self.assertFalse(self.js("document.getElementById('c-rawbox').classList.contains('hidden')"))
        self.choose_agent(cp.default_agent)
        dt.wait_for("!document.getElementById('c-fields').classList.contains('hidden')", what="the fields again")

        # VERIFY_BACKUP: backupId is required; submitting without it is refused in the page.
        self.type_into("#c-type", "VERIFY_BACKUP")
        dt.wait_for("!!document.querySelector(%s)" % json.dumps(ROW % "backupId" + " input[required]"),
                    what="a required backupId input")
        self.assertIn("backupId string *", self.text(ROW % "backupId" + " label"))
        self.type_into("#c-inst", "mc-1")
        self.js("document.querySelector('#create button[type=submit]').click()")
        dt.wait_for("document.querySelector(%s).innerText !== ''" % json.dumps(ROW % "backupId" + " .err"),
                    what="the field's error")
        self.assertIn("not sent", self.text("#c-result"))
        self.assertTrue(self.js("document.activeElement === document.querySelector(%s)" % json.dumps(ROW % "backupId" + " input")),
                        "the focus is on the missing field")
        time.sleep(0.5)
        self.assertEqual(self.jobs(), [], "nothing reached the server")

        # Choose BACKUP_INSTANCE: its description, cancellable flag and three optional fields.
        self.type_into("#c-type", "BACKUP_INSTANCE")
        dt.wait_for("!!document.querySelector(%s)" % json.dumps(ROW % "exclude"), what="the BACKUP_INSTANCE fields")
        about = self.text("#c-about")
        self.assertIn(by["BACKUP_INSTANCE"]["description"].split("\n")[0][:40], about)
        self.assertIn("cancellable", about)
        self.assertNotIn("not cancellable", about)
        self.assertEqual(self.js("Array.from(document.querySelectorAll('#c-fields .param')).map(r => "
                                 "r.dataset.param + ':' + r.querySelector('input,select,textarea').tagName)"),
                         self.expected_fields(by["BACKUP_INSTANCE"]["params"]))
        fields = self.js("Array.from(document.querySelectorAll('#c-fields .param')).map(r => r.dataset.param)")
        for name in ("backupId", "exclude", "quiesce"):
            self.assertIn(name, fields)
        self.assertEqual(self.js("document.querySelectorAll('#c-fields [required]').length"), 0, "all optional")
        self.assertIn("optional", self.text(ROW % "backupId" + " label"))

        # A value of the wrong JSON kind is refused before submit too.
        self.type_into(ROW % "exclude" + " textarea", '{"logs": 1}')
        self.assertEqual(self.text(ROW % "exclude" + " .err"), "must be an array")
        self.type_into(ROW % "backupId" + " input", "nightly-from-form")
        self.js("document.getElementById('c-result').textContent = ''")
        self.key("Enter", 13, "\r")  # submit from the keyboard
        dt.wait_for("document.getElementById('c-result').innerText.includes('not sent')", what="the refusal")
        self.assertTrue(self.js("document.activeElement === document.querySelector(%s)" % json.dumps(ROW % "exclude" + " textarea")))
        time.sleep(0.5)
        self.assertEqual(self.jobs(), [])
        self.type_into(ROW % "exclude" + " textarea", '["logs/", "cache/"]')
        self.assertEqual(self.text(ROW % "exclude" + " .err"), "")
        self.assertEqual(self.text("#c-result"), "", "the refusal goes once every field is valid")
        self.shot("create-form", 1280, 900, False, clip_sel="aside > section:last-child")

        self.focus(ROW % "backupId" + " input")
        self.key("Enter", 13, "\r")
        created = dt.wait_for("(() => { const t = document.getElementById('c-result').innerText;"
                              " return t.startsWith('created ') ? t.slice(8) : null; })()", what="the created job")
        job = cp.api("GET", "/v1/jobs/" + created).json
        self.assertEqual(job["type"], "BACKUP_INSTANCE")
        self.assertEqual(job["instanceId"], "mc-1")
        self.assertEqual(job["params"], {"backupId": "nightly-from-form", "exclude": ["logs/", "cache/"]})

        # Advanced: raw JSON, prefilled from the fields; the server's did-you-mean shown next to the form.
        self.focus("#c-raw")
        self.key(" ", 32, " ", "Space")  # tick it with the keyboard
        dt.wait_for("!document.getElementById('c-rawbox').classList.contains('hidden')", what="the raw JSON box")
        self.assertEqual(json.loads(self.js("document.getElementById('c-params').value")),
                         {"backupId": "nightly-from-form", "exclude": ["logs/", "cache/"]})
        self.type_into("#c-params", '{"backupId": "x",}')
        self.js("document.querySelector('#create button[type=submit]').click()")
        dt.wait_for("document.getElementById('c-result').innerText.startsWith('not sent: params: ')", what="bad JSON refused")
        self.assertNotEqual(self.text("#c-params-err"), "")
        self.assertEqual(len(self.jobs()), 1)
        self.type_into("#c-params", '{"bakupId": "typo"}')
        self.js("document.querySelector('#create button[type=submit]').click()")
        dt.wait_for("document.getElementById('c-result').innerText.includes('did you mean')", what="the server's 400")
        self.assertIn("unknown parameter 'bakupId' (did you mean 'backupId'?)", self.text("#c-result"))
        self.assertEqual(len(self.jobs()), 1)
        # Back to the fields is refused while the JSON names a parameter the type has not (nothing lost).
        self.js("document.getElementById('c-raw').click()")
        self.assertIn("no parameter bakupId", self.text("#c-params-err"))
        self.assertTrue(self.js("document.getElementById('c-raw').checked"))
        self.type_into("#c-params", '{"backupId": "from-raw", "quiesce": {"command": "save-off"}}')
        self.js("document.getElementById('c-raw').click()")
        self.assertFalse(self.js("document.getElementById('c-raw').checked"))
        self.assertEqual(self.js("document.querySelector(%s).value" % json.dumps(ROW % "backupId" + " input")), "from-raw")
        self.assertEqual(json.loads(self.js("document.querySelector(%s).value" % json.dumps(ROW % "quiesce" + " textarea"))),
                         {"command": "save-off"})
        self.assertEqual(self.js("document.querySelector(%s).value" % json.dumps(ROW % "exclude" + " textarea")), "")

        # Booleans: START_INSTANCE's optional waitReady can be left unset (its default is true).
        self.type_into("#c-type", "START_INSTANCE")
        dt.wait_for("!!document.querySelector(%s)" % json.dumps(ROW % "waitReady" + " select"), what="waitReady")
        self.type_into(ROW % "timeoutSeconds" + " input", "45")
        self.js("{ const s = document.querySelector(%s); s.value = 'false'; s.dispatchEvent(new Event('change')); }"
                % json.dumps(ROW % "waitReady" + " select"))
        self.focus(ROW % "timeoutSeconds" + " input")
        self.key("Enter", 13, "\r")
        created = dt.wait_for("(() => { const t = document.getElementById('c-result').innerText;"
                              " return t.startsWith('created ') ? t.slice(8) : null; })()", what="the second job")
        self.assertEqual(cp.api("GET", "/v1/jobs/" + created).json["params"], {"timeoutSeconds": 45, "waitReady": False})

        # A script added to jobs_dir while the page is open: the agent reports again, and the
        # form reads the report again when the type field gets the focus.
        tmp = os.path.join(self.jobs_dir, ".count_up.lua.tmp")
        with open(tmp, "w") as f:
            f.write('return { type = "COUNT_UP", description = "Counts.", cancellable = false, why = "too quick",\n'
                    '  params = { count = "integer", label = "string?" }, run = function(job) return {} end }\n')
        os.rename(tmp, os.path.join(self.jobs_dir, "count_up.lua"))
        deadline = time.monotonic() + 30
        while not any(t["type"] == "COUNT_UP" for t in
                      cp.api("GET", "/v1/agents/%s/job-types" % cp.default_agent).json["jobTypes"]):
            self.assertLess(time.monotonic(), deadline, "the agent never reported COUNT_UP")
            time.sleep(0.1)
        self.type_into("#c-type", "COUNT_UP")
        dt.wait_for("!!document.querySelector(%s)" % json.dumps(ROW % "count" + " input[type=number][required]"),
                    what="the COUNT_UP fields")
        self.assertIn("not cancellable: too quick", self.text("#c-about"))
        self.type_into(ROW % "count" + " input", "2.5")
        self.js("document.getElementById('c-result').textContent = ''")
        self.key("Enter", 13, "\r")
        dt.wait_for("document.getElementById('c-result').innerText.includes('not sent')", what="2.5 refused")
        self.assertNotEqual(self.text(ROW % "count" + " .err"), "")
        self.type_into(ROW % "count" + " input", "3")
        self.key("Enter", 13, "\r")
        created = dt.wait_for("(() => { const t = document.getElementById('c-result').innerText;"
                              " return t.startsWith('created ') ? t.slice(8) : null; })()", what="the COUNT_UP job")
        self.assertEqual(cp.api("GET", "/v1/jobs/" + created).json["params"], {"count": 3})

        # Phone width: the form fits, nothing scrolls sideways.
        self.type_into("#c-type", "BACKUP_INSTANCE")
        dt.wait_for("!!document.querySelector(%s)" % json.dumps(ROW % "exclude"), what="the fields")
        self.shot("create-form-phone", 390, 844, True)
        self.assertLessEqual(self.js("document.documentElement.scrollWidth"), 390 + 1)
        self.assertLessEqual(self.js("document.getElementById('create').getBoundingClientRect().right"), 390)


if __name__ == "__main__":
    unittest.main()
