"""PRUNE_BACKUPS end to end: restic's documented retention examples on real backups,
every parameter, dry runs, leftovers of interrupted backups, refusals."""
import json
import os
import shutil
import time
import unittest

from jv_run import JobvisorTestCase
from jobs_fault import backup_violations
from jobs_fixtures import leftovers, populate, read_json, write_file

SUNDAYS = ["2019-09-01", "2019-09-08", "2019-09-15", "2019-09-22", "2019-09-29", "2019-10-06",
           "2019-10-13", "2019-10-20", "2019-10-27", "2019-11-03", "2019-11-10", "2019-11-17"]


class Prune(JobvisorTestCase):
    def setUp(self):
        super().setUp()
        self.inst = self.instance_dir()
        populate(os.path.join(self.inst, "data"), seed=3, files=8)
        r = self.run_job("BACKUP_INSTANCE", params={"backupId": "seed"})
        self.assertEqual(r.status, "COMPLETED", r)
        self.bdir = os.path.join(self.inst, "backups")
        self.seed_manifest = read_json(os.path.join(self.bdir, "seed.json"))
        os.remove(os.path.join(self.bdir, "seed.json"))
        os.rename(os.path.join(self.bdir, "seed.tar.zst"), os.path.join(self.tmp, "seed.tar.zst"))

    def make(self, bid, created):
        """A real, verifiable backup with a chosen createdAt (a copy of the seed)."""
        shutil.copy(os.path.join(self.tmp, "seed.tar.zst"), os.path.join(self.bdir, bid + ".tar.zst"))
        m = dict(self.seed_manifest, backupId=bid, createdAt=created)
        write_file(os.path.join(self.bdir, bid + ".json"), json.dumps(m))

    def sundays(self):
        ids = []
        for d in SUNDAYS:
            bid = "s" + d.replace("-", "")
            self.make(bid, d + "T11:00:00Z")
            ids.append(bid)
        return ids

    def present(self):
        return sorted(n[:-5] for n in os.listdir(self.bdir) if n.endswith(".json") and not n.startswith("."))

    def prune(self, **params):
        r = self.run_job("PRUNE_BACKUPS", params=params)
        self.assertEqual(r.status, "COMPLETED", r)
        return r.result["output"]

    def test_restic_doc_keep_daily_4_on_twelve_sundays(self):
        ids = self.sundays()
        out = self.prune(keepDaily=4)
        self.assertEqual(out["kept"], ids[::-1][:4])
        self.assertEqual(out["removed"], ids[::-1][4:])
        self.assertEqual(self.present(), sorted(ids[-4:]))
        for bid in ids[:-4]:
            self.assertFalse(os.path.exists(os.path.join(self.bdir, bid + ".tar.zst")))
        self.assertEqual(backup_violations(self.inst), [])
        self.assertEqual(leftovers(self.inst), [])
        self.assertEqual(out["reasons"][ids[-1]], ["newest", "daily"])
        self.assertFalse(out["dryRun"])

    def test_dry_run_removes_nothing(self):
        ids = self.sundays()
        write_file(os.path.join(self.bdir, "orphan.tar.zst"), b"partial")
        os.utime(os.path.join(self.bdir, "orphan.tar.zst"), (0, 0))
        before = sorted(os.listdir(self.bdir))
        out = self.prune(keepLast=2, dryRun=True)
        self.assertTrue(out["dryRun"])
        self.assertEqual(out["kept"], ids[::-1][:2])
        self.assertEqual(out["removed"], ids[::-1][2:])
        self.assertEqual(out["leftovers"], ["orphan.tar.zst"])
        self.assertEqual(sorted(os.listdir(self.bdir)), before)
        self.assertEqual(os.listdir(os.path.join(self.inst, ".jobvisor", "markers")), [])

    def test_every_count_parameter(self):
        times = {
            "h1": "2024-06-10T10:05:00Z", "h2": "2024-06-10T10:45:00Z", "h3": "2024-06-10T11:15:00Z",
            "d1": "2024-06-09T08:00:00Z", "w1": "2024-06-02T08:00:00Z", "m1": "2024-05-15T08:00:00Z",
            "y1": "2023-07-01T08:00:00Z", "y0": "2022-07-01T08:00:00Z",
        }
        cases = [
            ({"keepLast": 3}, ["h3", "h2", "h1"]),
            ({"keepHourly": 2}, ["h3", "h2"]),
            ({"keepDaily": 2}, ["h3", "d1"]),
            ({"keepWeekly": 2}, ["h3", "d1"]),  # 2024-06-10 is a Monday: d1 (Sunday) is the previous ISO week
            ({"keepMonthly": 2}, ["h3", "m1"]),
            ({"keepYearly": 2}, ["h3", "y1"]),
            ({"keepWithin": "1d"}, ["h3", "h2", "h1"]),
            ({"keepWithin": "1y1d"}, ["h3", "h2", "h1", "d1", "w1", "m1", "y1"]),
            ({"keepHourly": 1, "keepYearly": 3}, ["h3", "y1", "y0"]),
        ]
        for params, want in cases:
            for f in os.listdir(self.bdir):
                os.remove(os.path.join(self.bdir, f))
            for bid, t in times.items():
                self.make(bid, t)
            out = self.prune(**params)
            self.assertEqual(out["kept"], want, params)
            self.assertEqual(sorted(self.present()), sorted(want), params)
            self.assertEqual(sorted(out["kept"] + out["removed"]), sorted(times), params)

    def test_empty_or_bad_policy_is_refused_and_nothing_is_removed(self):
        self.sundays()
        before = sorted(os.listdir(self.bdir))
        for params, want in [
            ({}, "empty retention policy"),
            ({"keepLast": 0, "dryRun": False}, "empty retention policy"),
            ({"keepDaily": -5}, "keepDaily must be 0 or more, or -1 for unlimited"),
            ({"keepWithin": "1w"}, "keepWithin: invalid duration '1w': unknown unit 'w'"),
            ({"keepDaily": "7"}, "parameter 'keepDaily' must be integer"),
            ({"keepForever": 1}, "unknown parameter 'keepForever'"),
        ]:
            r = self.run_job("PRUNE_BACKUPS", params=params)
            self.assertEqual(r.status, "FAILED", params)
            self.assertIn(want, r.error_message, params)
            self.assertEqual(sorted(os.listdir(self.bdir)), before)

    def test_unlimited(self):
        ids = self.sundays()
        out = self.prune(keepWeekly=-1)
        self.assertEqual(out["kept"], ids[::-1])
        self.assertEqual(out["removed"], [])

    def test_newest_complete_backup_is_always_kept(self):
        self.make("old", "2020-01-01T00:00:00Z")
        self.make("new", "2020-01-02T00:00:00Z")
        out = self.prune(keepWithin="1h")
        self.assertEqual(out["kept"], ["new"])
        self.assertIn("newest", out["reasons"]["new"])
        self.assertEqual(self.present(), ["new"])

    def test_leftovers_older_than_the_newest_complete_backup_are_removed(self):
        self.make("a", "2024-01-01T00:00:00Z")
        self.make("b", "2024-01-02T00:00:00Z")
        old = time.time() - 3600
        for name, data in [("crashed.tar.zst", b"half"), (".b.json.tmp.4242", b"{"),
                           ("notdone.json", json.dumps(dict(self.seed_manifest, complete=False))),
                           ("notdone.tar.zst", b"x")]:
            write_file(os.path.join(self.bdir, name), data)
            os.utime(os.path.join(self.bdir, name), (old, old))
        # newer than every complete backup: could be a backup in progress elsewhere; kept
        write_file(os.path.join(self.bdir, "future.tar.zst"), b"x")
        os.utime(os.path.join(self.bdir, "future.tar.zst"), (time.time() + 3600,) * 2)
        # unreadable manifest: never treated as a leftover
        write_file(os.path.join(self.bdir, "weird.json"), "{not json")
        os.utime(os.path.join(self.bdir, "weird.json"), (old, old))
        out = self.prune(keepLast=5)
        self.assertEqual(out["kept"], ["b", "a"])
        self.assertEqual(out["leftovers"], [".b.json.tmp.4242", "crashed.tar.zst", "notdone.json",
                                            "notdone.tar.zst"])
        self.assertEqual(sorted(os.listdir(self.bdir)),
                         ["a.json", "a.tar.zst", "b.json", "b.tar.zst", "future.tar.zst", "weird.json"])

    def test_no_backups_at_all(self):
        out = self.prune(keepLast=1)
        self.assertEqual((out["kept"], out["removed"], out["leftovers"]), ([], [], []))


if __name__ == "__main__":
    unittest.main()
