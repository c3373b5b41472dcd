"""docs/openapi.yaml: well-formed, consistent with the router, and true of real answers.

The file is written in JSON syntax (valid YAML 1.2), so the standard library's
json module parses it; there is no YAML parser in the standard library and
this test does not pretend to have one. It checks the document's structure
(version, operations, responses, path parameters, every $ref resolving), that
its paths and methods are exactly the routes in examples/controlplane/http.c,
and validates real answers of jobvisor-cp against its schemas with a small
validator for the JSON Schema keywords the document uses.
"""

import json
import os
import re
import unittest

from cp_harness import CpTestCase, http

SRC = os.environ.get("JV_SOURCE_DIR") or os.path.join(os.path.dirname(__file__), "..", "..")
DOC = os.path.join(SRC, "docs", "openapi.yaml")
METHODS = {"get", "post", "put", "delete", "patch"}


def load():
    with open(DOC) as f:
        return json.load(f)


def resolve(doc, ref):
    assert ref.startswith("#/"), ref
    node = doc
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def validate(doc, schema, value, path="$"):
    """Check value against the JSON Schema subset used in openapi.yaml; returns a list of problems."""
    if "$ref" in schema:
        return validate(doc, resolve(doc, schema["$ref"]), value, path)
    errs = []
    types = schema.get("type")
    if types is not None:
        types = types if isinstance(types, list) else [types]
        pytypes = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
        ok = False
        for t in types:
            if t == "integer":
                ok |= isinstance(value, int) and not isinstance(value, bool)
            elif t == "number":
                ok |= isinstance(value, (int, float)) and not isinstance(value, bool)
            else:
                ok |= isinstance(value, pytypes[t])
        if not ok:
            return ["%s: %r is not %s" % (path, value, types)]
    if "enum" in schema and value not in schema["enum"]:
        errs.append("%s: %r not in %r" % (path, value, schema["enum"]))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errs.append("%s: %r < %r" % (path, value, schema["minimum"]))
        if "maximum" in schema and value > schema["maximum"]:
            errs.append("%s: %r > %r" % (path, value, schema["maximum"]))
    if isinstance(value, str) and "pattern" in schema and not re.search(schema["pattern"], value):
        errs.append("%s: %r does not match %s" % (path, value, schema["pattern"]))
    if isinstance(value, dict):
        for k in schema.get("required", []):
            if k not in value:
                errs.append("%s: missing %s" % (path, k))
        for k, sub in schema.get("properties", {}).items():
            if k in value:
                errs += validate(doc, sub, value[k], path + "." + k)
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errs += validate(doc, schema["items"], item, "%s[%d]" % (path, i))
    return errs


class Document(unittest.TestCase):
    def setUp(self):
        self.doc = load()

    def test_structure(self):
        d = self.doc
        self.assertTrue(d["openapi"].startswith("3."))
        self.assertTrue(d["info"]["title"] and d["info"]["version"])
        self.assertIn("agentToken", d["components"]["securitySchemes"])
        self.assertIn("adminToken", d["components"]["securitySchemes"])
        ops = 0
        for path, item in d["paths"].items():
            self.assertTrue(path.startswith("/"))
            names = set(re.findall(r"{(\w+)}", path))
            for method, op in item.items():
                self.assertIn(method, METHODS, path)
                ops += 1
                self.assertTrue(op.get("operationId") and op.get("summary"), (path, method))
                declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
                self.assertEqual(declared, names, (path, method))
                for p in op.get("parameters", []):
                    if p["in"] == "path":
                        self.assertTrue(p["required"])
                codes = op["responses"]
                self.assertTrue(any(c.startswith("2") or c == "101" for c in codes), (path, method))
                for code, r in codes.items():
                    self.assertRegex(code, r"^[1-5]\d\d$")
                    self.assertTrue(r.get("description"), (path, method, code))
        self.assertGreaterEqual(ops, 12)

    def test_every_ref_resolves(self):
        refs = []

        def walk(node):
            if isinstance(node, dict):
                for k, v in node.items():
                    if k == "$ref":
                        refs.append(v)
                    else:
                        walk(v)
            elif isinstance(node, list):
                for v in node:
                    walk(v)

        walk(self.doc)
        self.assertGreater(len(refs), 20)
        for r in refs:
            with self.subTest(ref=r):
                self.assertIsInstance(resolve(self.doc, r), dict)

    def test_paths_are_exactly_the_router_table(self):
        with open(os.path.join(SRC, "examples", "controlplane", "http.c")) as f:
            src = f.read()
        table = src[src.index("static const struct route routes[]"):]
        table = table[:table.index("};")]
        routes = set()
        for method, n, s0, s2, s4 in re.findall(
                r'\{"(\w+)", (\d), "([\w-]+)", (?:"([\w-]+)"|NULL), \w+, \d, (?:"([\w-]+)"|NULL)\}', table):
            n = int(n)
            parts = ["/v1", s0] + (["{id}"] if n >= 2 else []) + ([s2] if n >= 3 else []) + \
                (["{id}"] if n >= 4 else []) + ([s4] if n == 5 else [])
            routes.add((method.lower(), "/".join(parts)))
        documented = set()
        for path, item in self.doc["paths"].items():
            if path in ("/", "/v1/ws"):
                continue
            norm = re.sub(r"{\w+}", "{id}", path)
            for method in item:
                documented.add((method, norm))
        self.assertEqual(len(routes), 27)
        self.assertEqual(documented, routes)


class RealAnswers(CpTestCase):
    def check(self, schema_name, value):
        doc = load()
        errs = validate(doc, {"$ref": "#/components/schemas/" + schema_name}, value)
        self.assertEqual(errs, [], "%s does not match %s" % (json.dumps(value)[:400], schema_name))

    def test_answers_match_the_schemas(self):
        job = self.cp.create_job(params={"x": 1}, timeoutSeconds=60)
        self.check("Job", job)
        agent = self.cp.agent()
        poll = agent.poll(capacity=2)
        self.check("PollAnswer", poll.json)
        [a] = poll.json["jobs"]
        ev = agent.progress(a, 50, "half")
        self.check("EventsAnswer", ev.json)
        self.check("ResultAnswer", agent.result(a["jobRunId"], "FAILED", error={"message": "x", "retryable": False}).json)
        self.check("JobList", self.cp.api("GET", "/v1/jobs?limit=1").json)
        self.check("EventList", self.cp.api("GET", "/v1/runs/%s/events" % a["jobRunId"]).json)
        self.check("Run", self.cp.api("GET", "/v1/runs/" + a["jobRunId"]).json)
        self.check("AgentList", self.cp.api("GET", "/v1/agents").json)
        self.check("Job", self.cp.api("POST", "/v1/jobs/%s/retry" % job["jobId"]).json)
        self.check("Error", self.cp.api("POST", "/v1/jobs", {"type": 1}).json)
        self.check("AgentJobTypes", self.cp.api("GET", "/v1/agents/%s/job-types" % agent.id).json)
        sched = {"cron": "0 4 * * *", "timezone": "Europe/Berlin", "enabled": True, "overlap": "skip",
                 "job": {"type": "BACKUP_INSTANCE", "agentId": agent.id, "instanceId": "i", "params": {}}}
        self.check("ScheduleCreate", sched)
        r = self.cp.api("POST", "/v1/schedules", sched)
        self.check("Schedule", r.json)
        self.check("Schedule", self.cp.api("PATCH", "/v1/schedules/" + r.json["scheduleId"], {"enabled": False}).json)
        self.check("ScheduleList", self.cp.api("GET", "/v1/schedules").json)
        self.check("CronPreview", self.cp.api("GET", "/v1/cron-preview?cron=@daily&timezone=UTC&count=2").json)
        self.check("ScheduleDeleted", self.cp.api("DELETE", "/v1/schedules/" + r.json["scheduleId"]).json)
        audit = self.cp.api("GET", "/v1/audit?limit=3").json
        self.assertEqual(len(audit["entries"]), 3)
        self.check("AuditList", audit)
        report = {"jobTypes": [{"type": "X_ONE", "description": "d", "cancellable": False, "why": "w",
                                "source": "jobs_dir", "params": {"a": {"type": "integer", "required": True}}}],
                  "problems": ["x.lua:1: oops"]}
        self.check("JobTypesReport", report)
        r = http(self.cp.url + "/v1/agents/%s/job-types" % agent.id, "POST", report, agent.token)
        self.check("JobTypesReportAnswer", r.json)
        self.check("AgentJobTypes", self.cp.api("GET", "/v1/agents/%s/job-types" % agent.id).json)
        # The validator is not a rubber stamp.
        self.assertTrue(validate(load(), {"$ref": "#/components/schemas/Job"}, {"jobId": 5}))


if __name__ == "__main__":
    unittest.main()
