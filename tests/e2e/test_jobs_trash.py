"""A completed run's staging goes to .jobvisor/trash in one rename; the next run empties the trash
in the background. RESTORE_BACKUP's previous data/ is deleted off its critical path this way."""
import os
import unittest

from jv_run import JobvisorTestCase
from jobs_fixtures import leftovers, populate, tree_digest


class Trash(JobvisorTestCase):
    def setUp(self):
        super().setUp()
        self.inst = self.instance_dir()
        self.datadir = os.path.join(self.inst, "data")
        self.trash = os.path.join(self.inst, ".jobvisor", "trash")

    def run_ok(self, what, params=None):
        r = self.run_job(what, params=params)
        self.assertEqual(r.status, "COMPLETED", r)
        return r

    def test_restore_parks_the_previous_data_in_trash_and_the_next_run_sweeps_it(self):
        restored = populate(self.datadir, seed=31, files=50)
        self.run_ok("BACKUP_INSTANCE", {"backupId": "b1"})
        for name in os.listdir(self.datadir):  # the world moves on: different data
            p = os.path.join(self.datadir, name)
            if os.path.isfile(p):
                os.remove(p)
        previous = populate(self.datadir, seed=32, files=40)
        self.assertNotEqual(previous, restored)

        r = self.run_ok("RESTORE_BACKUP", {"backupId": "b1"})
        self.assertEqual(tree_digest(self.datadir), restored)
        self.assertEqual(leftovers(self.inst), [])  # no staging left
        # the previous data/ sits, whole, in the run's trash entry
        run_id = r.events[0]["jobRunId"]
        parked = [os.path.join(dp, "data") for dp, dn, _ in os.walk(os.path.join(self.trash, run_id))
                  if "data" in dn]
        self.assertEqual(len(parked), 1, os.listdir(self.trash))
        self.assertEqual(tree_digest(parked[0]), previous)

        # any next run on the instance empties the trash while its script runs: this one
        # waits (reading .jobvisor is allowed) until the sweep is done
        self.script("""
return { type = "WAIT_TRASH", params = { entry = "string" }, run = function(job)
  local deadline = os.time() + 60
  while fs.exists(".jobvisor/trash/" .. job.params.entry) do
    if os.time() > deadline then job.fail("the trash was not swept within 60 s") end
  end
  return { listed = #(fs.list(".jobvisor/trash") or {}) }
end }""", "wait_trash.lua")
        r = self.run_ok(os.path.join(self.jobs, "wait_trash.lua"), {"entry": run_id})
        self.assertFalse(os.path.exists(os.path.join(self.trash, run_id)))

    def test_a_run_with_nothing_in_trash_and_the_trash_of_a_killed_sweep(self):
        populate(self.datadir, seed=33, files=5)
        self.run_ok("BACKUP_INSTANCE", {"backupId": "b1"})
        # a sweep killed halfway leaves a partial tree, read-only directories included
        part = os.path.join(self.trash, "11111111-2222-3333-4444-555555555555", "stage-1", "x")
        os.makedirs(os.path.join(part, "deep"))
        with open(os.path.join(part, "deep", "f"), "w") as f:
            f.write("left")
        os.chmod(os.path.join(part, "deep"), 0o500)
        self.script("""
return { type = "WAIT_TRASH", run = function(job)
  local deadline = os.time() + 60
  while #(fs.list(".jobvisor/trash") or {}) > 0 do
    if os.time() > deadline then job.fail("the trash was not swept within 60 s") end
  end
  return {}
end }""", "wait_empty.lua")
        self.run_ok(os.path.join(self.jobs, "wait_empty.lua"))
        self.assertEqual(os.listdir(self.trash), [])


if __name__ == "__main__":
    unittest.main()
