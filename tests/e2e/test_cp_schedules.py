"""Schedules on the real jobvisor-cp: cron parsing edge cases and DST (through
GET /v1/cron-preview, which uses the firing code the schedules use), the
schedule API, real firings at a minute boundary, overlap skip|queue, catch-up
after downtime (once, never a burst) and exactly-once firing with two
replicas on one database.

"Time passes" is simulated where a test cannot wait for the clock: the test
moves a schedule's next_fire into the past in the database (as if the control
plane had been down or the minute had come); everything after that is the
control plane's own sweep."""
import datetime
import json
import os
import time
import unittest

from cp_harness import ControlPlane, CpTestCase


def iso(s):
    return datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc)


def preview(cp, cron, tz="UTC", after=None, count=5):
    q = "cron=%s&timezone=%s&count=%d" % (cron.replace(" ", "+"), tz, count)
    if after:
        q += "&after=" + after
    return cp.api("GET", "/v1/cron-preview?" + q)


class Cron(CpTestCase):
    def fires(self, cron, tz="UTC", after="2026-01-01T00:00:00Z", count=5):
        r = preview(self.cp, cron, tz, after, count)
        self.assertEqual(r.status, 200, r)
        return [f.replace(":00.000Z", "") for f in r.json["fires"]]

    def test_fields_lists_ranges_steps_names(self):
        # 2026-01-01 is a Thursday.
        self.assertEqual(self.fires("*/15 9-10 * * mon-fri", count=6),
                         ["2026-01-01T09:00", "2026-01-01T09:15", "2026-01-01T09:30", "2026-01-01T09:45",
                          "2026-01-01T10:00", "2026-01-01T10:15"])
        self.assertEqual(self.fires("0 0 1,15 * *", count=3),
                         ["2026-01-15T00:00", "2026-02-01T00:00", "2026-02-15T00:00"])
        self.assertEqual(self.fires("5/20 0 * * *", count=3), ["2026-01-01T00:05", "2026-01-01T00:25", "2026-01-01T00:45"])
        self.assertEqual(self.fires("0 12 * JAN,mar SUN", count=3),
                         ["2026-01-04T12:00", "2026-01-11T12:00", "2026-01-18T12:00"])
        self.assertEqual(self.fires("0 0 * * 7", count=1), self.fires("0 0 * * 0", count=1), "7 is Sunday too")
        self.assertEqual(self.fires("0 0 * * 0", count=1), ["2026-01-04T00:00"])
        # Both day fields restricted: either matches (13th OR Friday).
        self.assertEqual(self.fires("0 0 13 * 5", count=4),
                         ["2026-01-02T00:00", "2026-01-09T00:00", "2026-01-13T00:00", "2026-01-16T00:00"])
        self.assertEqual(self.fires("@daily", count=2), ["2026-01-02T00:00", "2026-01-03T00:00"])
        self.assertEqual(self.fires("@hourly", count=1), ["2026-01-01T01:00"])
        self.assertEqual(self.fires("0 0 29 2 *", count=2), ["2028-02-29T00:00", "2032-02-29T00:00"])
        self.assertEqual(self.fires("0 0 30 2 *"), [], "never fires")
        # Strictly after: a firing exactly at `after` is not repeated.
        self.assertEqual(self.fires("0 0 * * *", after="2026-01-01T00:00:00Z", count=1), ["2026-01-02T00:00"])

    def test_bad_expressions_are_refused_naming_the_field(self):
        bad = {
            "* * * *": "expected 5 fields",
            "0 * * * * 2026": "seconds and years are not supported",
            "60 * * * *": "minute: 60 is out of range 0-59",
            "0 24 * * *": "hour: 24 is out of range 0-23",
            "0 0 0 * *": "day of month: 0 is out of range 1-31",
            "0 0 * 13 *": "month: 13 is out of range 1-12",
            "0 0 * * 8": "day of week: 8 is out of range 0-7",
            "5-1 * * * *": "minute: range 5-1 goes backwards",
            "*/0 * * * *": "minute: cannot read '*/0'",
            "0 0 * foo *": "month: cannot read 'foo'",
            "@reboot": "unknown macro '@reboot'",
            "1,,2 * * * *": "minute: cannot read",
        }
        for expr, msg in bad.items():
            r = preview(self.cp, expr)
            self.assertEqual(r.status, 400, (expr, r))
            self.assertIn(msg, r.json["error"], expr)
        r = preview(self.cp, "0 0 * * *", tz="Europe/Atlantis")
        self.assertEqual(r.status, 400)
        self.assertIn("unknown time zone 'Europe/Atlantis'", r.json["error"])
        r = preview(self.cp, "0 0 * * *", tz="../../etc/passwd")
        self.assertEqual(r.status, 400)

    def test_dst_spring_forward_runs_once_at_the_transition(self):
        # Europe/Berlin 2026-03-29: 02:00 CET -> 03:00 CEST (01:00 UTC); 02:30 does not exist.
        self.assertEqual(self.fires("30 2 * * *", "Europe/Berlin", "2026-03-28T00:00:00Z", 3),
                         ["2026-03-28T01:30", "2026-03-29T01:00", "2026-03-30T00:30"])
        # Every 30 minutes: the skipped walls collapse into one firing at 03:00 CEST.
        self.assertEqual(self.fires("*/30 * * * *", "Europe/Berlin", "2026-03-29T00:15:00Z", 4),
                         ["2026-03-29T00:30", "2026-03-29T01:00", "2026-03-29T01:30", "2026-03-29T02:00"])
        # America/New_York 2026-03-08: 02:00 EST -> 03:00 EDT (07:00 UTC).
        self.assertEqual(self.fires("30 2 * * *", "America/New_York", "2026-03-07T12:00:00Z", 2),
                         ["2026-03-08T07:00", "2026-03-09T06:30"])

    def test_dst_fall_back_runs_once_hourly_keeps_its_pace(self):
        # Europe/Berlin 2026-10-25: 03:00 CEST -> 02:00 CET (01:00 UTC); 02:30 happens twice.
        self.assertEqual(self.fires("30 2 * * *", "Europe/Berlin", "2026-10-24T00:00:00Z", 3),
                         ["2026-10-24T00:30", "2026-10-25T00:30", "2026-10-26T01:30"])
        # With every hour selected, the repeated hour fires too (real time keeps its pace).
        self.assertEqual(self.fires("0 * * * *", "Europe/Berlin", "2026-10-24T22:30:00Z", 5),
                         ["2026-10-24T23:00", "2026-10-25T00:00", "2026-10-25T01:00", "2026-10-25T02:00",
                          "2026-10-25T03:00"])
        self.assertEqual(self.fires("0 4 * * 1-5", "America/New_York", "2026-10-30T00:00:00Z", 2),
                         ["2026-10-30T08:00", "2026-11-02T09:00"])


def poke_next_fire(cp, schedule_id, ms):
    cp.sql("UPDATE schedules SET next_fire = ? WHERE schedule_id = ?", (ms, schedule_id))


def now_ms():
    return int(time.time() * 1000)


def schedule_body(agent_id, **kw):
    b = {"cron": "0 4 * * *", "timezone": "Europe/Berlin",
         "job": {"type": "BACKUP_INSTANCE", "agentId": agent_id, "instanceId": "mc-1",
                 "params": {"backupId": "nightly"}, "maxAttempts": 2},
         "enabled": True, "overlap": "skip"}
    b.update(kw)
    return b


class ScheduleCalls:
    def body(self, **kw):
        return schedule_body(self.cp.default_agent, **kw)

    def create(self, **kw):
        r = self.cp.api("POST", "/v1/schedules", self.body(**kw))
        self.assertEqual(r.status, 201, r)
        return r.json

    def jobs_of(self, sid):
        return [j for j in self.cp.api("GET", "/v1/jobs?limit=500").json["jobs"] if j["scheduleId"] == sid]

    def wait_schedule(self, sid, pred, what, timeout=20):
        deadline = time.monotonic() + timeout
        s = None
        while time.monotonic() < deadline:
            s = self.cp.api("GET", "/v1/schedules/" + sid).json
            if pred(s):
                return s
            time.sleep(0.1)
        self.fail("schedule never showed %s: %s" % (what, json.dumps(s)))


class ScheduleApi(ScheduleCalls, CpTestCase):
    def test_create_get_list_patch_delete(self):
        s = self.create()
        self.assertEqual((s["cron"], s["timezone"], s["enabled"], s["overlap"]), ("0 4 * * *", "Europe/Berlin", True, "skip"))
        nxt = iso(s["nextFireAt"])
        self.assertGreater(nxt, datetime.datetime.now(datetime.timezone.utc))
        self.assertIn(nxt.hour, (2, 3), "04:00 Berlin is 02:00 or 03:00 UTC")
        self.assertEqual((s["lastFireAt"], s["lastJobId"], s["lastJobStatus"]), (None, None, None))
        self.assertEqual(s["job"]["params"], {"backupId": "nightly"})
        ids = [x["scheduleId"] for x in self.cp.api("GET", "/v1/schedules").json["schedules"]]
        self.assertIn(s["scheduleId"], ids)
        path = "/v1/schedules/" + s["scheduleId"]
        r = self.cp.api("PATCH", path, {"enabled": False})
        self.assertEqual((r.status, r.json["enabled"], r.json["nextFireAt"]), (200, False, None))
        r = self.cp.api("PATCH", path, {"enabled": True, "cron": "15 6 * * *", "timezone": "UTC"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual((iso(r.json["nextFireAt"]).hour, iso(r.json["nextFireAt"]).minute), (6, 15))
        r = self.cp.api("PATCH", path, {"overlap": "queue", "job": dict(self.body()["job"], instanceId="mc-2")})
        self.assertEqual((r.json["overlap"], r.json["job"]["instanceId"], r.json["cron"]), ("queue", "mc-2", "15 6 * * *"))
        for patch, msg in [({"colour": 1}, "unknown field 'colour'"), ({"cron": "99 * * * *"}, "'cron': minute"),
                           ({"overlap": "maybe"}, "'overlap' must be"), ({"enabled": "yes"}, "'enabled'"),
                           ({"timezone": "Nowhere/Town"}, "unknown time zone"),
                           ({"job": {"type": "NOPE_TYPE", "agentId": self.cp.default_agent, "instanceId": "x"}},
                            "unknown job type 'NOPE_TYPE'")]:
            r = self.cp.api("PATCH", path, patch)
            self.assertEqual(r.status, 400, (patch, r))
            self.assertIn(msg, r.json["error"])
        self.assertEqual(self.cp.api("GET", path).json["overlap"], "queue", "a refused PATCH changes nothing")
        r = self.cp.api("DELETE", path)
        self.assertEqual((r.status, r.json["deleted"]), (200, True))
        self.assertEqual(self.cp.api("GET", path).status, 404)
        self.assertEqual(self.cp.api("DELETE", path).status, 404)
        self.assertEqual(self.cp.api("PATCH", path, {"enabled": True}).status, 404)

    def test_bad_schedules_are_refused(self):
        job = self.body()["job"]
        cases = [
            (self.body(cron="0 4 * *"), "'cron': expected 5 fields"),
            (self.body(cron=5), "'cron' must be a string"),
            (self.body(timezone="Mars/Olympus"), "unknown time zone 'Mars/Olympus'"),
            (self.body(overlap="parallel"), "'overlap' must be"),
            (self.body(job=dict(job, jobId="fixed")), "'job.jobId' cannot be set"),
            (self.body(job=dict(job, agentId="ghost")), "job: unknown agent 'ghost'"),
            (self.body(job=dict(job, colour=1)), "job: unknown field 'colour'"),
            (self.body(job="BACKUP"), "'job' must be an object"),
            (self.body(cron="0 0 31 2 *"), "never fires"),
            (dict(self.body(), extra=True), "unknown field 'extra'"),
        ]
        for body, msg in cases:
            r = self.cp.api("POST", "/v1/schedules", body)
            self.assertEqual(r.status, 400, (body, r))
            self.assertIn(msg, r.json["error"])

    def test_overlap_skip_then_queue(self):
        # A yearly schedule made due by hand: each poke is one new firing.
        s = self.create(cron="0 0 1 1 *", timezone="UTC")
        sid = s["scheduleId"]
        poke_next_fire(self.cp, sid, now_ms() - 1000)
        s = self.wait_schedule(sid, lambda x: x["lastOutcome"] == "created", "its first job")
        [job] = self.jobs_of(sid)
        self.assertEqual(job["jobId"], s["lastJobId"])
        self.assertEqual(iso(s["nextFireAt"]).strftime("%m-%d %H:%M"), "01-01 00:00")
        # The job is still QUEUED (no agent took it): the next firing is skipped.
        poke_next_fire(self.cp, sid, now_ms() - 1000)
        s = self.wait_schedule(sid, lambda x: (x["lastOutcome"] or "").startswith("skipped"), "a skip")
        self.assertIn("previous job of this schedule is still active", s["lastOutcome"])
        self.assertEqual(len(self.jobs_of(sid)), 1)
        self.assertEqual(s["lastJobId"], None)
        # overlap = queue: a second job, queued behind the first.
        self.assertEqual(self.cp.api("PATCH", "/v1/schedules/" + sid, {"overlap": "queue"}).status, 200)
        poke_next_fire(self.cp, sid, now_ms() - 1000)
        s = self.wait_schedule(sid, lambda x: x["lastOutcome"] == "created" and x["lastJobId"] != job["jobId"],
                               "a queued second job")
        self.assertEqual(len(self.jobs_of(sid)), 2)
        # Once the agent has finished both, skip creates again.
        agent = self.cp.agent()
        for _ in range(2):
            [a] = agent.take()
            agent.progress(a, 100, "done")
            self.assertEqual(agent.result(a["jobRunId"], "COMPLETED").status, 200)
        self.assertEqual(self.cp.api("PATCH", "/v1/schedules/" + sid, {"overlap": "skip"}).status, 200)
        poke_next_fire(self.cp, sid, now_ms() - 1000)
        s = self.wait_schedule(sid, lambda x: x["lastOutcome"] == "created" and x["lastJobStatus"] == "QUEUED",
                               "a third job")
        self.assertEqual(len(self.jobs_of(sid)), 3)
        self.assertTrue(all(j["scheduleId"] == sid for j in self.jobs_of(sid)))


# A real firing at a minute boundary cannot be hurried: its control plane and
# schedule are made when the module starts, and MinuteBoundary runs last
# (load_tests), so the other tests run while the minute comes round.
_minute = {}


def setUpModule():
    cp = ControlPlane().start()
    _minute["cp"] = cp
    # The next minute boundary at least 2 s away, as a daily cron: it fires
    # there once, however long the other tests take.
    at = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=62)
    at = at.replace(second=0, microsecond=0)
    body = schedule_body(cp.default_agent, cron="%d %d * * *" % (at.minute, at.hour), timezone="UTC")
    _minute["due"] = at
    _minute["created"] = cp.api("POST", "/v1/schedules", body)


def tearDownModule():
    if "cp" in _minute:
        _minute["cp"].close()


class MinuteBoundary(ScheduleCalls, unittest.TestCase):
    def setUp(self):
        self.cp = _minute["cp"]

    def test_fires_at_the_minute_boundary(self):
        r = _minute["created"]
        self.assertEqual(r.status, 201, r)
        s = r.json
        sid = s["scheduleId"]
        due = iso(s["nextFireAt"])
        self.assertEqual(due, _minute["due"])
        self.assertEqual((due.second, due.microsecond), (0, 0))
        # A real firing at the minute boundary (no poking).
        s = self.wait_schedule(sid, lambda x: x["lastJobId"], "its first job", timeout=75)
        self.assertEqual(s["lastFireAt"], due.strftime("%Y-%m-%dT%H:%M:%S.000Z"))
        [job] = self.jobs_of(sid)
        self.assertEqual((job["jobId"], job["type"], job["instanceId"], job["params"], job["maxAttempts"]),
                         (s["lastJobId"], "BACKUP_INSTANCE", "mc-1", {"backupId": "nightly"}, 2))
        self.assertEqual((s["lastJobStatus"], s["lastOutcome"]), ("QUEUED", "created"))
        self.assertGreater(iso(s["nextFireAt"]), due)
        # Paused: nothing more fires, however due it was.
        self.assertEqual(self.cp.api("PATCH", "/v1/schedules/" + sid, {"enabled": False}).status, 200)
        poke_next_fire(self.cp, sid, now_ms() - 1000)
        time.sleep(1.5)
        self.assertEqual(len(self.jobs_of(sid)), 1)


class CatchUp(unittest.TestCase):
    def test_missed_firings_run_once_within_the_window_and_never_in_a_burst(self):
        cp = ControlPlane(["--schedule-catch-up", "1800"]).start()
        self.addCleanup(cp.close)
        def make(cron):
            r = cp.api("POST", "/v1/schedules", {"cron": cron, "timezone": "UTC", "overlap": "queue",
                                                 "job": {"type": "BACKUP_INSTANCE", "agentId": "agent-1",
                                                         "instanceId": cron.split()[0].replace("*/", "e")}})
            self.assertEqual(r.status, 201, r)
            return r.json["scheduleId"]
        every5 = make("*/5 * * * *")
        daily = make("0 0 * * *")
        cp.stop()
        # Down for three days: 864 firings of every5 were missed, the latest at most 5 min ago;
        # the daily one's latest firing (today 00:00 UTC) is more than 30 min ago unless it is just after midnight.
        three_days = now_ms() - 3 * 86400 * 1000
        poke_next_fire(cp, every5, three_days - three_days % 300000)
        poke_next_fire(cp, daily, three_days - three_days % 86400000)
        cp.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            s = cp.api("GET", "/v1/schedules/" + every5).json
            d = cp.api("GET", "/v1/schedules/" + daily).json
            if s["lastOutcome"] and d["lastOutcome"]:
                break
            time.sleep(0.1)
        jobs = cp.api("GET", "/v1/jobs?limit=500").json["jobs"]
        mine = [j for j in jobs if j["scheduleId"] == every5]
        self.assertEqual(len(mine), 1, "once, not 864 times")
        self.assertEqual(s["lastOutcome"], "created")
        last = iso(s["lastFireAt"])
        age = datetime.datetime.now(datetime.timezone.utc) - last
        self.assertLessEqual(age.total_seconds(), 300 + 5, "the latest missed firing is the one that ran")
        self.assertGreater(iso(s["nextFireAt"]), datetime.datetime.now(datetime.timezone.utc))
        since_midnight = time.time() % 86400
        daily_jobs = [j for j in jobs if j["scheduleId"] == daily]
        if since_midnight > 1800 + 60:
            self.assertEqual(daily_jobs, [])
            self.assertIn("missed: the control plane was not running", d["lastOutcome"])
            self.assertIn("catch-up window 1800 s", d["lastOutcome"])
        else:
            self.assertEqual(len(daily_jobs), 1)
        self.assertGreater(iso(d["nextFireAt"]), datetime.datetime.now(datetime.timezone.utc))
        # Nothing more comes on later sweeps.
        time.sleep(1.5)
        jobs = cp.api("GET", "/v1/jobs?limit=500").json["jobs"]
        self.assertEqual(len([j for j in jobs if j["scheduleId"] == every5]), 1)


class Replicas(unittest.TestCase):
    def test_two_control_planes_on_one_database_fire_each_schedule_once(self):
        a = ControlPlane().start()
        self.addCleanup(a.close)
        ids = []
        for i in range(200):
            r = a.api("POST", "/v1/schedules", {"cron": "0 0 1 1 *", "timezone": "UTC", "overlap": "queue",
                                                "job": {"type": "BACKUP_INSTANCE", "agentId": "agent-1",
                                                        "instanceId": "r%d" % i}})
            self.assertEqual(r.status, 201, r)
            ids.append(r.json["scheduleId"])
        b = ControlPlane(tmpdir=None, db=a.db)
        b.admin_file, b.agents_file = a.admin_file, a.agents_file
        b.start()
        self.addCleanup(b.close)
        a.sql("UPDATE schedules SET next_fire = ?", (now_ms() - 1000,))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            ss = a.api("GET", "/v1/schedules").json["schedules"]
            if all(s["lastOutcome"] for s in ss):
                break
            time.sleep(0.1)
        jobs = a.api("GET", "/v1/jobs?limit=500").json["jobs"]
        per = {sid: len([j for j in jobs if j["scheduleId"] == sid]) for sid in ids}
        self.assertEqual(per, {sid: 1 for sid in ids})
        fired = (a.stderr_text().count("fired (due"), b.stderr_text().count("fired (due"))
        print("firings by replica a, b:", fired)
        self.assertEqual(sum(fired), len(ids))


def load_tests(loader, tests, pattern):
    """MinuteBoundary last: it waits for the minute its schedule was made for."""
    flat = []

    def walk(suite):
        for t in suite:
            if isinstance(t, unittest.TestSuite):
                walk(t)
            else:
                flat.append(t)
    walk(tests)
    return unittest.TestSuite(sorted(flat, key=lambda t: isinstance(t, MinuteBoundary)))


if __name__ == "__main__":
    unittest.main()
