"""End-to-end: file modes through `jobvisor run` — fs.chmod, the modes archive.extract keeps
(executable bits yes, setuid/setgid/sticky never) and http.download's `mode` option (the
content cache never hands its own mode to a copy that asked for another)."""
import io
import os
import stat
import tarfile
import unittest

from fsapi_e2e import FsapiCase, HttpServer, pattern_sha


def tar_with_modes(path, entries):
    """entries: (name, mode, kind) with kind file or dir."""
    with tarfile.open(path, "w") as t:
        for name, mode, kind in entries:
            info = tarfile.TarInfo(name)
            info.mode = mode
            info.mtime = 1700000000
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                t.addfile(info)
            else:
                data = b"#!/bin/sh\necho hi\n"
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))


def perm(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


class Chmod(FsapiCase):
    def test_sets_permission_bits_from_an_integer_or_an_octal_string(self):
        os.makedirs(self.ipath("bin"))
        for n in ("server", "tool"):
            with open(self.ipath("bin/" + n), "w") as f:
                f.write("x")
            os.chmod(self.ipath("bin/" + n), 0o644)
        out = self.assertCompleted(self.run_lua('''
            assert(fs.chmod("bin/server", 493))
            assert(fs.chmod("bin/tool", "750"))
            assert(fs.chmod("bin", "0700"))
            return { server = fs.stat("bin/server").mode, tool = fs.stat("bin/tool").mode }'''))
        self.assertEqual(out, {"server": 0o755, "tool": 0o750})
        self.assertEqual(perm(self.ipath("bin/server")), 0o755)
        self.assertEqual(perm(self.ipath("bin/tool")), 0o750)
        self.assertEqual(perm(self.ipath("bin")), 0o700)

    def test_refuses_setuid_setgid_and_sticky(self):
        with open(self.ipath("server"), "w") as f:
            f.write("x")
        os.chmod(self.ipath("server"), 0o644)
        for mode in ("4755", "2755", "1777", "6755"):
            res = self.run_lua(f'fs.chmod("server", "{mode}")')
            self.assertFailedWith(res, "setuid, setgid and sticky bits are not allowed")
        res = self.run_lua('fs.chmod("server", 2541)')  # 0o4755 as a number
        self.assertFailedWith(res, "not allowed")
        self.assertEqual(perm(self.ipath("server")), 0o644)

    def test_refuses_symlinks_escapes_the_root_and_nonsense(self):
        secret = os.path.join(self.outside, "secret.txt")
        before = perm(secret)
        os.symlink(secret, self.ipath("link-out"))
        os.symlink("server", self.ipath("link-in"))
        with open(self.ipath("server"), "w") as f:
            f.write("x")
        os.chmod(self.ipath("server"), 0o644)
        cases = [
            ('fs.chmod("link-out", 511)', "symlink"),
            ('fs.chmod("link-in", 511)', "symlink"),
            ('fs.chmod("../../../outside/secret.txt", 511)', "'..'"),
            ('fs.chmod("' + secret + '", 511)', "absolute"),
            ('fs.chmod(".", 511)', "instance root"),
            ('fs.chmod("server", "rwx")', "octal string"),
            ('fs.chmod("server", "9")', "octal string"),
            ('fs.chmod("server", 99999)', "from 0 to 0777"),
            ('fs.chmod("server", 1.5)', "got number"),
            ('fs.chmod("server")', "got no value"),
            ('fs.chmod(".jobvisor/lock", 511)', ".jobvisor/ belongs to jobvisor"),
        ]
        for body, needle in cases:
            with self.subTest(body=body):
                self.assertFailedWith(self.run_lua(body), needle)
        self.assertEqual(perm(secret), before)
        self.assertEqual(perm(self.ipath("server")), 0o644)

    def test_a_missing_file_is_an_expected_failure(self):
        out = self.assertCompleted(self.run_lua('''
            local ok, err = fs.chmod("nope", 420)
            return { ok = ok == nil, err = err }'''))
        self.assertTrue(out["ok"])
        self.assertIn("cannot change the mode of 'nope'", out["err"])


class ExtractModes(FsapiCase):
    def test_keeps_executable_bits_and_drops_setuid_setgid_sticky(self):
        os.makedirs(self.ipath("incoming"))
        tar_with_modes(self.ipath("incoming/b.tar"), [
            ("bin", 0o755, "dir"),
            ("bin/server", 0o755, "file"),
            ("bin/suid", 0o4755, "file"),
            ("bin/sgid", 0o2750, "file"),
            ("bin/private", 0o600, "file"),
            ("notes.txt", 0o644, "file"),
            ("shared", 0o1777, "dir"),
        ])
        self.assertCompleted(self.run_lua('''
            fs.mkdir("out")
            assert(archive.extract("incoming/b.tar", "out/b"))'''))
        out = self.ipath("out/b")
        self.assertEqual(perm(os.path.join(out, "bin/server")), 0o755)
        self.assertEqual(perm(os.path.join(out, "bin/suid")), 0o755)
        self.assertEqual(perm(os.path.join(out, "bin/sgid")), 0o750)
        self.assertEqual(perm(os.path.join(out, "bin/private")), 0o600)
        self.assertEqual(perm(os.path.join(out, "notes.txt")), 0o644)
        self.assertEqual(perm(os.path.join(out, "shared")), 0o777)
        self.assertTrue(os.access(os.path.join(out, "bin/server"), os.X_OK))


class DownloadMode(FsapiCase):
    def setUp(self):
        super().setUp()
        self.srv = HttpServer()
        self.addCleanup(self.srv.close)

    def test_mode_is_applied_masked_and_never_leaks_through_the_cache(self):
        size = 5000
        body = '''
            local a = assert(http.download(args.url, "a/server", { sha256 = args.sha, mode = args.mode }))
            local b = assert(http.download(args.url, "b/server", { sha256 = args.sha }))
            local c = assert(http.download(args.url, "c/server", { sha256 = args.sha, mode = "755" }))
            return { a = fs.stat("a/server").mode, b = fs.stat("b/server").mode,
                     c = fs.stat("c/server").mode, bc = b.cached, cc = c.cached }'''
        out = self.assertCompleted(self.run_lua(body, {"url": self.srv.url(f"/blob/m?size={size}"),
                                                       "sha": pattern_sha(size), "mode": 0o6755}))
        self.assertEqual(out["a"], 0o755)          # s-bits dropped
        self.assertEqual(out["b"], 0o644)          # default, though the cache copy is 0755
        self.assertEqual(out["c"], 0o755)
        self.assertTrue(out["bc"] and out["cc"])   # both served from the cache
        self.assertEqual(perm(self.ipath("b/server")), 0o644)
        self.assertEqual(perm(self.ipath("a/server")), 0o755)
        self.assertEqual(os.stat(self.ipath("a/server")).st_mode & 0o7000, 0)

    def test_a_bad_mode_option_raises(self):
        res = self.run_lua('http.download("http://127.0.0.1:1/x", "f", { sha256 = string.rep("0", 64), mode = "rwx" })')
        self.assertFailedWith(res, "option 'mode' must be an integer or an octal string")


if __name__ == "__main__":
    unittest.main()
