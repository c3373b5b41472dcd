"""Option tables of every module: both progress forms work; a malformed table or an unknown
option raises a clear error (issue 17: `{from =, to =}` used to be silently ignored)."""
import unittest

from jv_run import JobvisorTestCase

# (name, body of run(job), expected substring of the FAILED message)
REFUSED = [
    ("progress_half_named", 'fs.sha256("f", {progress = {from = 5}})', "option 'progress' must be {from, to} or {from = F, to = T}"),
    ("progress_one_number", 'fs.sha256("f", {progress = {5}})', "option 'progress' must be"),
    ("progress_backwards", 'fs.sha256("f", {progress = {from = 50, to = 10}})', "got from 50"),
    ("progress_over_100", 'fs.sha256("f", {progress = {0, 101}})', "0 <= F <= T <= 100"),
    ("progress_string_numbers", 'fs.sha256("f", {progress = {from = "5", to = "9"}})', "from and to are numbers"),
    ("progress_mixed_forms", 'fs.sha256("f", {progress = {5, 9, from = 1}})', "option 'progress' must be"),
    ("progress_extra_key", 'fs.sha256("f", {progress = {from = 5, to = 9, step = 1}})', "unknown key 'step'"),
    ("progress_not_a_table", 'fs.sha256("f", {progress = "5-90"})', "got string"),
    ("progress_in_archive", 'archive.create("d", "a.tar.zst", {progress = {frm = 1, to = 2}})', "unknown key 'frm'"),
    ("progress_in_download", 'http.download("http://127.0.0.1:9/x", "x", {insecure_no_checksum = true, progress = {1}})',
     "option 'progress' must be"),
    ("progress_in_wait_ready", 'instance.wait_ready(5, {progress = {from = 1}})', "option 'progress' must be"),
    ("fs_unknown_option_lists_known", 'fs.mkdir("a", {parent = true})', "fs.mkdir: unknown option 'parent' (known: parents, mode)"),
    ("fs_bad_value", 'fs.mkdir("a", {parents = "yes"})', "option 'parents' must be a boolean, got string"),
    ("fs_int_as_string", 'fs.write("a", "x", {mode = "420"})', "option 'mode' must be an integer"),
    ("fs_options_not_a_table", 'fs.read("f", 100)', "bad argument #2 to 'read' (table expected, got number)"),
    ("archive_unknown", 'archive.extract("a", "b", {strip = 1})', "archive.extract: unknown option 'strip'"),
    ("http_unknown", 'http.get_json("http://127.0.0.1:9/", {timeoutSeconds = 5})', "http.get_json: unknown option 'timeoutSeconds'"),
    ("instance_start_unknown", 'instance.start({timeout = 5})', "instance.start: unknown option 'timeout' (known: timeoutSeconds)"),
    ("instance_stop_unknown", 'instance.stop({focre = true})', "instance.stop: unknown option 'focre'"),
    ("instance_stop_bad_force", 'instance.stop({force = 1})', "option 'force' must be a boolean"),
    ("instance_stop_bad_timeout", 'instance.stop({timeoutSeconds = "10"})', "option 'timeoutSeconds' must be a number of seconds in (0, 86400], got 10"),
    ("instance_wait_log_unknown", 'instance.wait_log("x", 5, {after = 3})', "instance.wait_log: unknown option 'after'"),
    ("instance_wait_log_bad_since", 'instance.wait_log("x", 5, {since = 1.5})', "option 'since' must be an integer"),
    ("instance_start_not_a_table", 'instance.start(30)', "bad argument #1 to 'start' (table expected, got number)"),
    ("job_fail_unknown", 'job.fail("boom", {retriable = true})', "job.fail: unknown option 'retriable' (known: retryable)"),
    ("job_fail_bad_value", 'job.fail("boom", {retryable = "yes"})', "option 'retryable' must be a boolean"),
    ("json_encode_unknown", 'json.encode({}, {pretty = true})', "json.encode: unknown option 'pretty' (known: indent)"),
    ("fs_remove_has_no_options", 'fs.remove("f", {recursive = true})', "fs.remove takes at most 1 argument, got 2 (it has no options)"),
    ("archive_list_has_no_options", 'archive.list("a", {})', "archive.list takes at most 1 argument, got 2"),
    ("instance_status_takes_nothing", 'instance.status({fresh = true})', "instance.status takes 0 arguments, got 1"),
    ("job_step_one_message", 'job.step("a", "b")', "job.step takes at most 1 argument, got 2"),
    ("json_decode_has_no_options", 'json.decode("{}", {null = false})', "json.decode takes at most 1 argument, got 2"),
    ("bad_argument_keeps_its_name", 'fs.remove({})', "bad argument #1 to 'remove' (string expected, got table)"),
    ("log_extra_arguments", 'log.info("count", 3)', "log.info takes exactly one message, got 2 arguments"),
]


class Options(JobvisorTestCase):
    def run_body(self, body):
        self.script('return { type = "OPTS", run = function(job)\n'
                    '  fs.write("f", string.rep("x", 100000)); fs.mkdir("d")\n'
                    f'  {body}\n'
                    '  return {}\nend }\n')
        return self.run_job(self.jobs + "/job.lua")

    def test_refused(self):
        for name, body, want in REFUSED:
            with self.subTest(name):
                r = self.run_body(body)
                self.assertEqual(r.status, "FAILED", r)
                self.assertIn(want, r.error_message)
                self.assertIn("job.lua:3:", r.error_message)  # the line of the call, not of jobvisor

    def test_both_progress_forms_report_percent(self):
        for form in ("{10, 40}", "{from = 10, to = 40}"):
            with self.subTest(form):
                r = self.run_body(f'job.progress(5, "x"); assert(fs.sha256("f", {{progress = {form}}}))')
                self.assertEqual(r.status, "COMPLETED", r)
                pcts = [e["percent"] for e in r.events if e["kind"] == "progress"]
                self.assertIn(40, pcts)  # the call's end maps to `to`

    def test_good_options_still_work(self):
        r = self.run_body('assert(fs.mkdir("a/b", {parents = true, mode = 448}))\n'
                          'assert(json.encode({1}, {indent = true}))\n'
                          'log.info("one message")\nprint()')
        self.assertEqual(r.status, "COMPLETED", r)


if __name__ == "__main__":
    unittest.main()
