"""Instance monitor: what it refuses to run, and the messages it gives."""
import json
import os
import unittest

from instance_helpers import DEMO, JOBVISOR, Instance, default_spec


@unittest.skipUnless(JOBVISOR and DEMO, "needs JOBVISOR_BIN and JV_DEMO_SERVER_BIN")
class Refusals(unittest.TestCase):
    def refused(self, inst, settings=None):
        line = inst.start(settings)
        self.assertTrue(line.startswith("error "), line)
        st = inst.state()
        self.assertEqual(st["state"], "CRASHED")
        self.assertIsNone(st["pid"])
        self.assertNotIn("server started", inst.console())
        inst.wait_monitor_exit()
        return line[6:]

    def test_executable_outside_the_build_is_refused(self):
        inst = Instance(self, spec=default_spec(command=["/bin/sleep", "60"]))
        msg = self.refused(inst)
        self.assertIn("'/bin/sleep'", msg)
        self.assertIn("not inside the active build and not listed in allowed_executables", msg)
        self.assertIn(msg, inst.state()["message"])

    def test_allowed_executables_admits_one(self):
        spec = default_spec(command=["sleep", "60"], stop={"signal": "SIGTERM"})
        del spec["ready"]
        real = os.path.realpath("/bin/sleep")
        inst = Instance(self, spec=spec, settings={"allowed_executables": [real]})
        self.assertRegex(inst.start(), r"^ok started \d+$")
        reply, _ = inst.stop()
        self.assertEqual(reply["status"]["lastExit"]["signal"], "SIGTERM")
        self.assertTrue(reply["status"]["lastExit"]["requested"])

    def test_symlink_out_of_the_build_is_refused(self):
        inst = Instance(self)
        server = os.path.join(inst.dir, "builds", "b1", "server")
        os.unlink(server)
        os.symlink("/bin/sleep", server)
        self.assertIn("not inside the active build", self.refused(inst))

    def test_current_pointing_outside_builds_is_refused(self):
        inst = Instance(self)
        os.unlink(os.path.join(inst.dir, "current"))
        os.symlink("/usr/bin", os.path.join(inst.dir, "current"))
        self.assertIn("'current' must point to a build under builds/", self.refused(inst))

    def test_missing_active_build(self):
        inst = Instance(self)
        os.unlink(os.path.join(inst.dir, "current"))
        self.assertIn("no active build", self.refused(inst))

    def test_not_executable(self):
        inst = Instance(self)
        os.chmod(os.path.join(inst.dir, "builds", "b1", "server"), 0o644)
        self.assertIn("is not an executable file", self.refused(inst))

    def test_cwd_outside_the_instance_is_refused(self):
        inst = Instance(self, spec=default_spec(cwd="/tmp"))
        self.assertIn("lies outside the instance directory", self.refused(inst))

    def test_bad_specs_name_the_problem(self):
        cases = [
            ({"cwd": "data"}, "'command' is missing"),
            (dict(default_spec(), ready={"logPattern": "Done (", "timeoutSeconds": 5}),
             "'ready.logPattern' is not a valid extended regex"),
            (dict(default_spec(), stop={"command": "stop", "signal": "SIGFOO"}),
             "'stop.signal' names an unknown signal 'SIGFOO'"),
            (dict(default_spec(), restart={"policy": "sometimes"}), "'restart.policy' must be"),
            (dict(default_spec(), limits={"nofile": "many"}), "'limits.nofile' must be a number"),
            (dict(default_spec(), stop={"comand": "stop"}), "unknown key 'stop.comand'"),
            ("{not json", "not valid JSON"),
        ]
        for spec, want in cases:
            with self.subTest(want=want):
                inst = Instance(self, spec=spec)
                self.assertIn(want, self.refused(inst))

    def test_unreadable_spec(self):
        inst = Instance(self)
        os.unlink(os.path.join(inst.dir, "instance.json"))
        self.assertIn("cannot read", self.refused(inst))


if __name__ == "__main__":
    unittest.main()
