"""jobs/lib/retention.lua through the real `jobvisor run`: restic's `forget` policy
semantics, the examples from restic's documentation, and a randomised comparison
with an independent Python oracle (tests/lib/jobs_retention.py)."""
import datetime as dt
import json
import os
import random
import unittest

from jv_run import JobvisorTestCase
from jobs_retention import UTC, iso, oracle, parse

DRIVER = r"""
local r = require("lib.retention")
return {
  type = "RETENTION_CHECK",
  params = { cases = "array" },
  run = function(job)
    local out = json.array()
    for i, c in ipairs(job.params.cases) do
      local res = {}
      local policy, err = r.validate(c.policy)
      if not policy then
        res.error = err
      else
        local items = {}
        for _, s in ipairs(c.items or {}) do
          local t, e = r.parse_time(s.time)
          if not t then error(e) end
          items[#items + 1] = { id = s.id, time = t }
        end
        if c.daily then
          local t0 = assert(r.parse_time(c.daily.start))
          for k = 0, c.daily.days - 1 do
            items[#items + 1] = { id = string.format("%06d", k), time = t0 + k * 86400 }
          end
        end
        local now = c.now and assert(r.parse_time(c.now)) or os.time()
        local keep, remove = r.apply(items, policy, now)
        res.keep, res.remove, res.reasons = json.array(), json.array(), {}
        for _, it in ipairs(keep) do
          res.keep[#res.keep + 1] = it.id
          res.reasons[it.id] = it.reasons
        end
        for _, it in ipairs(remove) do res.remove[#res.remove + 1] = it.id end
        res.text = policy.text
      end
      out[i] = res
    end
    return { results = out }
  end,
}
"""

SUNDAYS = ["2019-09-01", "2019-09-08", "2019-09-15", "2019-09-22", "2019-09-29", "2019-10-06",
           "2019-10-13", "2019-10-20", "2019-10-27", "2019-11-03", "2019-11-10", "2019-11-17"]


def items_of(times):
    return [{"id": t, "time": t} for t in times]


class Retention(JobvisorTestCase):
    def check(self, cases):
        path = self.script(DRIVER, name="retention_check.lua")
        pfile = os.path.join(self.tmp, "params.json")
        with open(pfile, "w") as f:
            json.dump({"cases": cases}, f)
        r = self.run_job(path, params="@" + pfile, timeout=120)
        self.assertEqual(r.code, 0, r)
        return r.result["output"]["results"]

    def one(self, policy, times=None, now="2100-01-01T00:00:00Z", **extra):
        case = {"policy": policy, "now": now, **extra}
        if times is not None:
            case["items"] = items_of(times)
        return self.check([case])[0]

    # --- restic's documentation, "Removing snapshots according to a policy" ---

    def test_doc_twelve_sundays_keep_daily_4(self):
        times = [d + "T11:00:00Z" for d in SUNDAYS]
        res = self.one({"keepDaily": 4}, times)
        self.assertEqual(res["keep"], [d + "T11:00:00Z" for d in reversed(SUNDAYS[-4:])])
        self.assertEqual(res["remove"], [d + "T11:00:00Z" for d in reversed(SUNDAYS[:-4])])
        for t in res["keep"]:
            self.assertIn("daily", res["reasons"][t])

    def test_doc_one_sunday_matches_hourly_daily_and_weekly(self):
        # "the most recent snapshot on a Sunday would match both hourly, daily and weekly"
        times = [d + "T11:00:00Z" for d in SUNDAYS]
        res = self.one({"keepHourly": 1, "keepDaily": 1, "keepWeekly": 1}, times)
        newest = SUNDAYS[-1] + "T11:00:00Z"
        self.assertEqual(res["keep"], [newest])
        self.assertEqual(set(res["reasons"][newest]), {"newest", "hourly", "daily", "weekly"})

    def test_doc_hundred_years_of_dailies(self):
        # restic: daily backups for 100 years, --keep-daily 7 --keep-weekly 5
        # --keep-monthly 12 --keep-yearly 75 keeps the 7 newest dailies, 4 more
        # end-of-week ones (the 7 dailies include one), 12 or 11 end-of-month ones and
        # 75 or 74 end-of-year ones. Ending on Sunday 2023-12-31 makes it 4, 11, 74.
        start = dt.datetime(1924, 1, 7, 3, 0, tzinfo=UTC)
        end = dt.datetime(2023, 12, 31, 3, 0, tzinfo=UTC)
        days = (end - start).days + 1
        self.assertGreater(days, 365 * 99)
        policy = {"keepDaily": 7, "keepWeekly": 5, "keepMonthly": 12, "keepYearly": 75}
        res = self.check([{"policy": policy, "now": "2100-01-01T00:00:00Z",
                           "daily": {"start": iso(start), "days": days}}])[0]
        day = lambda ident: start + dt.timedelta(days=int(ident))
        kept = [day(i) for i in res["keep"]]
        self.assertEqual(len(kept), 7 + 4 + 11 + 74)
        self.assertEqual(kept[:7], [end - dt.timedelta(days=k) for k in range(7)])
        only = lambda reason: [day(i) for i in res["keep"] if res["reasons"][i] == [reason]]
        self.assertEqual(len(only("weekly")), 4)
        self.assertTrue(all(t.isoweekday() == 7 for t in only("weekly")))
        self.assertEqual(len(only("monthly")), 11)
        self.assertTrue(all((t + dt.timedelta(days=1)).day == 1 for t in only("monthly")))
        self.assertEqual(len(only("yearly")), 74)
        self.assertTrue(all((t.month, t.day) == (12, 31) for t in only("yearly")))
        self.assertEqual(min(t.year for t in only("yearly")), 2023 - 74)
        self.assertEqual(len(res["keep"]) + len(res["remove"]), days)

    def test_doc_keep_within_2y5m7d3h(self):
        # "2y5m7d3h will keep all snapshots made in the two years, five months, seven
        # days and three hours before the latest (most recent) snapshot"
        latest = "2024-08-20T12:00:00Z"  # minus 2y5m = 2022-03-20, minus 7d3h = 2022-03-13T09:00
        times = [latest, "2022-03-13T09:00:01Z", "2022-03-13T09:00:00Z", "2022-03-13T08:59:59Z",
                 "2020-01-01T00:00:00Z"]
        res = self.one({"keepWithin": "2y5m7d3h"}, times)
        self.assertEqual(res["keep"], [latest, "2022-03-13T09:00:01Z"])
        self.assertEqual(res["remove"], ["2022-03-13T09:00:00Z", "2022-03-13T08:59:59Z",
                                         "2020-01-01T00:00:00Z"])
        self.assertEqual(res["reasons"]["2022-03-13T09:00:01Z"], ["within 2y5m7d3h"])

    def test_doc_empty_policy_is_refused(self):
        for policy in ({}, {"keepLast": 0}, {"keepDaily": 0, "keepWeekly": 0}):
            res = self.one(policy, [])
            self.assertIn("empty retention policy", res["error"])

    def test_doc_unlimited_keeps_every_bucket(self):
        times = ["2024-01-01T10:00:00Z", "2024-01-01T11:00:00Z", "2024-01-02T10:00:00Z",
                 "2024-01-03T09:00:00Z", "2024-01-03T10:00:00Z"]
        res = self.one({"keepDaily": -1}, times)
        self.assertEqual(res["keep"], ["2024-01-03T10:00:00Z", "2024-01-02T10:00:00Z",
                                       "2024-01-01T11:00:00Z", "2024-01-01T10:00:00Z"])
        # the oldest is kept because the unlimited rule still has counts left
        self.assertEqual(res["reasons"]["2024-01-01T10:00:00Z"], ["oldest daily"])
        self.assertEqual(res["remove"], ["2024-01-03T09:00:00Z"])
        self.assertIn("all daily", res["text"])

    def test_doc_oldest_kept_when_counts_left(self):
        # "If there are not enough snapshots to keep one for each duration related
        # --keep-* option, the oldest snapshot is kept additionally"
        times = ["2024-05-01T08:00:00Z", "2024-05-01T09:00:00Z", "2024-05-02T09:00:00Z"]
        res = self.one({"keepDaily": 5}, times)
        self.assertEqual(res["keep"], times[::-1])
        self.assertEqual(res["reasons"]["2024-05-01T08:00:00Z"], ["oldest daily"])
        res = self.one({"keepDaily": 2}, times)
        self.assertEqual(res["keep"], ["2024-05-02T09:00:00Z", "2024-05-01T09:00:00Z"])

    # --- semantics ---

    def test_keep_last(self):
        times = ["2024-01-0%dT00:00:00Z" % d for d in range(1, 8)]
        res = self.one({"keepLast": 3}, times)
        self.assertEqual(res["keep"], times[::-1][:3])
        self.assertEqual(res["remove"], times[::-1][3:])

    def test_rules_are_ored_and_reasons_listed(self):
        times = ["2024-01-01T00:00:00Z", "2024-02-01T00:00:00Z", "2024-02-10T00:00:00Z",
                 "2024-03-01T00:00:00Z", "2024-03-05T00:00:00Z"]
        res = self.one({"keepLast": 2, "keepMonthly": 3}, times)
        self.assertEqual(res["keep"], ["2024-03-05T00:00:00Z", "2024-03-01T00:00:00Z",
                                       "2024-02-10T00:00:00Z", "2024-01-01T00:00:00Z"])
        self.assertEqual(res["reasons"]["2024-03-05T00:00:00Z"], ["newest", "last", "monthly"])
        self.assertEqual(res["reasons"]["2024-03-01T00:00:00Z"], ["last"])
        self.assertEqual(res["reasons"]["2024-02-10T00:00:00Z"], ["monthly"])
        self.assertEqual(res["reasons"]["2024-01-01T00:00:00Z"], ["monthly"])
        self.assertEqual(res["remove"], ["2024-02-01T00:00:00Z"])

    def test_weeks_are_iso_weeks_in_utc(self):
        # Sunday 2023-12-31 23:30 UTC and Monday 2024-01-01 00:30 UTC are in different ISO
        # weeks (2023-W52, 2024-W01); Monday 2024-12-30 is already 2025-W01.
        times = ["2023-12-31T23:30:00Z", "2024-01-01T00:30:00Z", "2024-12-29T12:00:00Z",
                 "2024-12-30T12:00:00Z", "2024-12-31T12:00:00Z"]
        res = self.one({"keepWeekly": 10}, times)
        self.assertEqual(res["keep"], ["2024-12-31T12:00:00Z", "2024-12-29T12:00:00Z",
                                       "2024-01-01T00:30:00Z", "2023-12-31T23:30:00Z"])
        # a +02:00 timestamp is bucketed by its UTC time: 01:30+02:00 is the previous UTC day
        res = self.one({"keepDaily": 2}, None, items=[
            {"id": "a", "time": "2024-03-02T01:30:00+02:00"},
            {"id": "b", "time": "2024-03-01T22:00:00Z"},
            {"id": "c", "time": "2024-03-02T02:30:00+02:00"}])
        self.assertEqual(res["keep"], ["c", "a"])
        self.assertEqual(res["remove"], ["b"])

    def test_keep_within_uses_calendar_months(self):
        # 2024-03-31 minus one month is "2024-02-31", which rolls over to 2024-03-02
        times = ["2024-03-31T12:00:00Z", "2024-03-02T12:00:01Z", "2024-03-02T12:00:00Z",
                 "2024-02-29T12:00:00Z"]
        res = self.one({"keepWithin": "1m"}, times)
        self.assertEqual(res["keep"], times[:2])
        self.assertEqual(res["remove"], times[2:])
        res = self.one({"keepWithin": "1y"}, ["2024-02-29T00:00:00Z", "2023-03-01T00:00:01Z",
                                              "2023-03-01T00:00:00Z"])
        self.assertEqual(res["keep"], ["2024-02-29T00:00:00Z", "2023-03-01T00:00:01Z"])

    def test_keep_within_is_relative_to_newest_past_backup(self):
        times = ["2030-01-01T00:00:00Z", "2024-01-10T00:00:00Z", "2024-01-05T00:00:00Z",
                 "2024-01-01T00:00:00Z"]
        res = self.one({"keepWithin": "7d"}, times, now="2024-06-01T00:00:00Z")
        # the future backup does not count as the newest; it is kept (it is within)
        self.assertEqual(res["keep"], times[:3])
        self.assertEqual(res["remove"], ["2024-01-01T00:00:00Z"])

    def test_newest_is_always_kept(self):
        times = ["2024-01-01T00:00:00Z", "2030-01-01T00:00:00Z"]
        res = self.one({"keepWithin": "1h"}, times, now="2024-06-01T00:00:00Z")
        self.assertEqual(res["keep"], ["2030-01-01T00:00:00Z", "2024-01-01T00:00:00Z"])
        self.assertIn("newest", res["reasons"]["2030-01-01T00:00:00Z"])

    def test_bad_policies_are_refused_with_the_field_named(self):
        cases = [
            ({"keepLast": -2}, "keepLast must be 0 or more, or -1 for unlimited"),
            ({"keepDaily": 1.5}, "keepDaily must be a whole number"),
            ({"keepWithin": "7w"}, "keepWithin: invalid duration '7w': unknown unit 'w'"),
            ({"keepWithin": "7"}, "no unit after 7"),
            ({"keepWithin": "d"}, "expected a number"),
            ({"keepWithin": "1d1d"}, "unit 'd' given twice"),
            ({"keepWithin": "0d"}, "it is zero"),
            ({"keepWithin": ""}, "empty duration"),
            ({"keepWithin": "-3d"}, "expected a number"),
        ]
        results = self.check([{"policy": p, "items": []} for p, _ in cases])
        for (policy, want), res in zip(cases, results):
            self.assertIn(want, res.get("error", ""), policy)

    def test_duration_forms_accepted(self):
        for d in ("7d", "1y2m3d4h", "4h", "2m", "1y", "3d1y", " 12h "):
            res = self.one({"keepWithin": d}, ["2024-01-01T00:00:00Z"])
            self.assertNotIn("error", res, d)

    def test_randomised_against_oracle(self):
        rng = random.Random(4242)
        keys = ["keepLast", "keepHourly", "keepDaily", "keepWeekly", "keepMonthly", "keepYearly"]
        cases, expected = [], []
        base = dt.datetime(2015, 6, 1, tzinfo=UTC)
        now = dt.datetime(2030, 1, 1, tzinfo=UTC)
        for _ in range(150):
            n = rng.randint(1, 60)
            spread = rng.choice([3600 * 6, 86400 * 3, 86400 * 40, 86400 * 400])
            times = sorted({base + dt.timedelta(seconds=rng.randint(0, spread * n)) for _ in range(n)})
            policy = {}
            for k in rng.sample(keys, rng.randint(1, 3)):
                policy[k] = rng.choice([-1, 1, 2, 3, 5, 8])
            if rng.random() < 0.3:
                policy["keepWithin"] = rng.choice(["1d", "7d", "1m", "2m14d", "1y", "36h", "1y1m1d1h"])
            items = [{"id": iso(t), "time": iso(t)} for t in times]
            cases.append({"policy": policy, "items": items, "now": iso(now)})
            expected.append(oracle([(iso(t), t) for t in times], policy, now))
        results = self.check(cases)
        for case, res, (keep, remove) in zip(cases, results, expected):
            self.assertEqual(res["keep"], keep, case["policy"])
            self.assertEqual(res["remove"], remove, case["policy"])

    def test_oracle_agrees_with_restic_doc_example(self):
        # guard the oracle itself with the documented example
        times = [parse(d + "T11:00:00Z") for d in SUNDAYS]
        keep, remove = oracle([(iso(t), t) for t in times], {"keepDaily": 4},
                              dt.datetime(2100, 1, 1, tzinfo=UTC))
        self.assertEqual(len(keep), 4)
        self.assertEqual(len(remove), 8)


if __name__ == "__main__":
    unittest.main()
