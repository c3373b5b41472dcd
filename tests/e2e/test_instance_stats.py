"""Instance resource stats reach the control plane (CPU, memory, processes,
data size, uptime), at the configured interval, and not at all with 0."""
import os
import time
import unittest

from agent_harness import AgentTestCase
from cp_harness import cp_bin
from instance_helpers import DEMO, JOBVISOR, Instance, wait_until
from test_instance_report import FixedPortCP, schema_errors


@unittest.skipUnless(JOBVISOR and DEMO and os.environ.get("JOBVISOR_CP_BIN"),
                     "needs the agent, the demo server and jobvisor-cp")
class Stats(AgentTestCase):
    TOKEN = "agent-1-token-0123456789abcdef"

    def setUp(self):
        super().setUp()
        cp_bin()
        self.cp.stop()
        os.makedirs(os.path.join(self.tmp, "cp"))
        self.cp = FixedPortCP(self.TOKEN, os.path.join(self.tmp, "cp"))
        self.cp.start()
        self.inst = Instance(self, data_dir=self.data)
        self.assertTrue(self.inst.start().startswith("ok started"))
        self.inst.wait_state("RUNNING")

    def tearDown(self):
        self.inst.cleanup()
        super().tearDown()

    def stats(self):
        r = self.cp.api("GET", "/v1/agents/agent-1/instances/s1")
        return (r.json or {}).get("stats") if r.status == 200 else None

    def test_stats_follow_the_server(self):
        with open(os.path.join(self.inst.dir, "data", "blob"), "wb") as f:
            f.write(os.urandom(3 * 1024 * 1024))
        self.start_agent(STATS_INTERVAL="0.5")
        first = wait_until(lambda: (lambda s: s if s and s.get("cpuCores") is not None and
                                    s.get("dataBytes") else None)(self.stats()),
                           15, what="stats with CPU and data size")
        self.assertGreaterEqual(first["processes"], 1)
        self.assertGreater(first["memoryBytes"], 0)
        self.assertGreaterEqual(first["dataBytes"], 3 * 1024 * 1024)
        self.assertGreaterEqual(first["cpuCores"], 0)
        self.assertIn(first["source"], ("cgroup", "proc"))
        # The server takes 96 MiB: memory follows.
        self.assertTrue(self.inst.call({"op": "send", "line": "alloc 96"})["ok"])
        self.inst.wait_console("Allocated 96 MiB")
        grown = wait_until(lambda: (lambda s: s if s and s["memoryBytes"] >= 96 * 1024 * 1024 and
                                    s["uptimeSeconds"] > first["uptimeSeconds"] else None)(self.stats()),
                           15, what="memory above 96 MiB")
        inst = self.cp.api("GET", "/v1/agents/agent-1/instances/s1").json
        self.assertGreaterEqual(len(inst["statsHistory"]), 2)
        self.assertEqual(schema_errors("Instance", inst), [])
        # A busy server shows its CPU.
        self.assertTrue(self.inst.call({"op": "send", "line": "spam 400000"})["ok"])
        wait_until(lambda: (self.stats() or {}).get("cpuCores", 0) and self.stats()["cpuCores"] > 0.01,
                   20, what="CPU use while the server is busy")
        self.assertGreater(grown["memoryBytes"], first["memoryBytes"])

    def test_interval_0_sends_no_stats(self):
        self.start_agent(STATS_INTERVAL="0")
        wait_until(lambda: (self.cp.api("GET", "/v1/agents/agent-1/instances/s1").json or {})
                   .get("state") == "RUNNING", 15, what="the instance reported")
        time.sleep(1.5)  # several default intervals would have passed at 0.5 s
        self.assertIsNone(self.stats())


if __name__ == "__main__":
    unittest.main()
