"""`cmake --install` to a temporary prefix: documentation, the systemd unit with that prefix,
man pages that say exactly what the installed binaries' --help says, and a bash completion
that offers every command and option --help names."""
import os
import re
import shutil
import subprocess
import tempfile
import unittest

BUILD = os.environ["JV_BUILD_DIR"]
SOURCE = os.environ["JV_SOURCE_DIR"]


def help_text(*argv):
    """What a binary prints for --help (usage may go to stderr)."""
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0")
    p = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, env=env)
    return (p.stdout + p.stderr).strip()


def verbatim_blocks(page):
    """The .nf/.fi blocks of a roff page, un-escaped back to plain text."""
    blocks = re.findall(r"^\.nf\n(.*?)\n\.fi$", page, re.S | re.M)
    out = []
    for b in blocks:
        b = re.sub(r"^\\&", "", b, flags=re.M)
        out.append(b.replace("\\e", "\\"))
    return out


def commands_of(top_help):
    return re.findall(r"^  ([a-z][a-z-]*)", top_help, re.M)


class InstalledDocs(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.prefix = tempfile.mkdtemp(prefix="jv-install-docs-")
        subprocess.run(["cmake", "--install", BUILD, "--prefix", cls.prefix], check=True,
                       capture_output=True)
        cls.bin = os.path.join(cls.prefix, "bin")
        cls.man = os.path.join(cls.prefix, "share", "man")
        cls.doc = os.path.join(cls.prefix, "share", "doc", "jobvisor")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.prefix, ignore_errors=True)

    def read(self, *parts):
        with open(os.path.join(*parts)) as f:
            return f.read()

    def test_documentation_is_installed(self):
        for name in ("README.md", "operations.md", "protocol.md", "lua-api.md", "jobs.md",
                     "security.md"):
            self.assertTrue(os.path.isfile(os.path.join(self.doc, name)), name)
        self.assertTrue(os.path.isfile(os.path.join(self.doc, "examples", "agent.conf.example")))

    def test_systemd_unit_carries_the_install_prefix(self):
        unit = self.read(self.prefix, "lib", "systemd", "system", "jobvisor.service")
        self.assertEqual(unit, self.read(self.doc, "examples", "jobvisor.service"))
        self.assertNotIn("@", unit)  # every placeholder filled
        self.assertNotIn("/usr/local", unit)
        wrapper, exe = re.search(r"^ExecStart=(\S+) (\S+) agent ", unit, re.M).groups()
        self.assertEqual(exe, os.path.join(self.bin, "jobvisor"))
        self.assertTrue(os.access(exe, os.X_OK))
        self.assertEqual(wrapper, os.path.join(self.prefix, "libexec", "jobvisor", "cgroup-delegate"))
        self.assertTrue(os.access(wrapper, os.X_OK))
        docs = re.search(r"^Documentation=(.*)$", unit, re.M).group(1).split()
        self.assertIn("man:jobvisor(1)", docs)
        files = [d[len("file://"):] for d in docs if d.startswith("file://")]
        self.assertEqual(files, [os.path.join(self.doc, "operations.md")])
        self.assertTrue(os.path.isfile(files[0]))
        for line in ("Type=notify", "KillMode=process", "Delegate=yes", "TimeoutStopSec=90"):
            self.assertIn(line, unit)

    def test_jobvisor_1_says_what_help_says(self):
        page = self.read(self.man, "man1", "jobvisor.1")
        blocks = verbatim_blocks(page)
        jv = os.path.join(self.bin, "jobvisor")
        top = help_text(jv, "--help")
        self.assertEqual(blocks[0], top)
        commands = commands_of(top)
        for cmd in ("agent", "run", "check", "status", "health"):
            self.assertIn(cmd, commands)
        for cmd in commands:
            self.assertIn(f".SS {cmd}\n", page)
            live = help_text(jv, cmd) if cmd in ("version", "help") else help_text(jv, cmd, "--help")
            self.assertIn(live, blocks, f"man page section for '{cmd}' differs from its --help")

    def test_jobvisor_cp_1_says_what_help_says(self):
        cp = os.path.join(self.bin, "jobvisor-cp")
        if not os.path.exists(cp):
            self.skipTest("jobvisor-cp not built")
        page = self.read(self.man, "man1", "jobvisor-cp.1")
        self.assertEqual(verbatim_blocks(page), [help_text(cp, "--help")])

    def test_jobvisor_conf_5_lists_every_setting_as_operations_md_does(self):
        page = self.read(self.man, "man5", "jobvisor.conf.5")
        ops = self.read(SOURCE, "docs", "operations.md")
        rows = re.findall(r"^\| `([a-z_]+)` \| `(JOBVISOR_[A-Z_]+)` \| (?:`([^`]*)`|\(([^)]*)\)) \|",
                          ops, re.M)
        self.assertGreater(len(rows), 20)
        entries = re.findall(r'^\.BR (\S+) " \(" (\S+) "\)"\ndefault: (.*)$', page, re.M)
        self.assertEqual(len(entries), len(rows))
        by_key = {k: (env, d) for k, env, d in entries}
        for key, env, default, none in rows:
            self.assertIn(key, by_key)
            self.assertEqual(by_key[key][0], env, key)
            want = default if default else "(none)"
            self.assertEqual(by_key[key][1].replace("\\e", "\\"), want, key)
        self.assertIn("drain_timeout", by_key)

    def test_pages_render_without_warnings(self):
        if not shutil.which("groff"):
            self.skipTest("groff is not installed (Debian: groff-base)")
        for sec, name in (("man1", "jobvisor.1"), ("man1", "jobvisor-cp.1"),
                          ("man5", "jobvisor.conf.5")):
            path = os.path.join(self.man, sec, name)
            if not os.path.exists(path):
                continue
            p = subprocess.run(["groff", "-man", "-ww", "-z", path], capture_output=True, text=True)
            self.assertEqual((p.returncode, p.stderr), (0, ""), name)

    def complete(self, *words):
        comp = os.path.join(self.prefix, "share", "bash-completion", "completions", "jobvisor")
        script = (f'source "{comp}"; COMP_WORDS=({" ".join(repr(w) for w in words)}); '
                  f'COMP_CWORD={len(words) - 1}; _jobvisor; printf "%s\\n" "${{COMPREPLY[@]}}"')
        p = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30,
                           cwd=self.prefix)
        self.assertEqual(p.stderr, "")
        return set(p.stdout.split())

    def test_bash_completion_offers_what_help_names(self):
        jv = os.path.join(self.bin, "jobvisor")
        top = help_text(jv, "--help")
        self.assertTrue(set(commands_of(top)) <= self.complete("jobvisor", ""))
        for cmd in ("agent", "run", "status", "health"):
            opts = set(re.findall(r"--[a-z][a-z0-9-]*", help_text(jv, cmd, "--help")))
            self.assertTrue(opts <= self.complete("jobvisor", cmd, "--"), cmd)
        self.assertEqual(self.complete("jobvisor", "run", "BACKUP_"), {"BACKUP_INSTANCE"})
        self.assertEqual(self.complete("jobvisor", "health", "--max-b"), {"--max-beat-age"})
        link = os.path.join(self.prefix, "share", "bash-completion", "completions", "jobvisor-cp")
        if os.path.exists(os.path.join(self.bin, "jobvisor-cp")):
            self.assertEqual(os.readlink(link), "jobvisor")


if __name__ == "__main__":
    unittest.main()
