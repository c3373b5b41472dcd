"""End-to-end: the `http` module through `jobvisor run` against a misbehaving server on
127.0.0.1 — wrong checksum, truncated and stalled bodies, refused schemes and redirects,
404, 500 then success, the content cache, get_json; every failure is clear, leaves no
file behind and changes nothing outside the instance (the shared cache aside)."""
import hashlib
import os
import unittest

from fsapi_e2e import FsapiCase, HttpServer, pattern, pattern_sha

DOWNLOAD = '''
local opts = args.opts or {}
local r, err = http.download(args.url, args.dst or "downloads/file.bin", opts)
if not r then job.fail(err) end
return r
'''


class Download(FsapiCase):
    def setUp(self):
        super().setUp()
        self.srv = HttpServer()
        self.addCleanup(self.srv.close)

    def download(self, path, opts, dst="downloads/file.bin", url=None):
        return self.run_lua(DOWNLOAD, {"url": url or self.srv.url(path), "dst": dst, "opts": opts})

    def assertNoFile(self, rel="downloads/file.bin"):
        self.assertFalse(os.path.exists(self.ipath(rel)))
        self.assertFalse(os.path.exists(self.ipath(rel + ".part")))

    def assertPattern(self, rel, size):
        with open(self.ipath(rel), "rb") as f:
            self.assertEqual(f.read(), pattern(size))

    def test_download_verified_and_cached(self):
        size = 3 << 20
        out = self.assertCompleted(self.download(f"/blob/a?size={size}",
                                                 {"sha256": pattern_sha(size), "size": size,
                                                  "progress": [10, 60]}))
        self.assertEqual(out["bytes"], size)
        self.assertFalse(out["cached"])
        self.assertPattern("downloads/file.bin", size)
        self.assertFalse(os.path.exists(self.ipath("downloads/file.bin.part")))
        # The shared cache holds it under its digest; a second download is local.
        self.assertTrue(os.path.exists(os.path.join(self.cache, pattern_sha(size))))
        out = self.assertCompleted(self.download(f"/blob/a?size={size}",
                                                 {"sha256": pattern_sha(size)}, dst="copy.bin"))
        self.assertTrue(out["cached"])
        self.assertEqual(self.srv.count("/blob/a"), 1)
        self.assertPattern("copy.bin", size)

    def test_wrong_checksum(self):
        res = self.download("/blob/a?size=5000", {"sha256": "ab" * 32})
        self.assertFailedWith(res, "checksum mismatch", "expected sha256 " + "ab" * 32)
        self.assertNoFile()

    def test_checksum_required_unless_insecure(self):
        res = self.download("/blob/a?size=5000", {})
        self.assertFailedWith(res, "opts.sha256 is required")
        self.assertEqual(self.srv.count("/blob/a"), 0)
        out = self.assertCompleted(self.download("/blob/a?size=5000", {"insecure_no_checksum": True}))
        self.assertEqual(out["sha256"], pattern_sha(5000))

    def test_truncated_body_resumes_or_fails_cleanly(self):
        size = 2 << 20
        out = self.assertCompleted(self.download(f"/truncate/k1?size={size}&times=1",
                                                 {"sha256": pattern_sha(size), "size": size}))
        self.assertEqual(out["attempts"], 2)
        self.assertPattern("downloads/file.bin", size)
        size += 1  # not in the cache from the download above
        res = self.download(f"/truncate/k2?size={size}&times=9",
                            {"sha256": pattern_sha(size), "size": size, "retries": 0,
                             "resume": False})
        self.assertFailedWith(res, "download failed")
        # The failed download left the earlier file as it was, and no .part.
        self.assertPattern("downloads/file.bin", size - 1)
        self.assertFalse(os.path.exists(self.ipath("downloads/file.bin.part")))

    def test_stalled_server_times_out(self):
        res = self.download("/stall/s?size=1000000",
                            {"sha256": pattern_sha(1000000), "retries": 0, "low_speed_time": 2,
                             "resume": False})
        self.assertFailedWith(res, "download failed", "cannot download")
        self.assertNoFile()

    def test_refused_schemes(self):
        for url in ("file:///etc/passwd", f"ftp://127.0.0.1:{self.srv.port}/x"):
            with self.subTest(url=url):
                res = self.download(None, {"sha256": "0" * 64}, url=url)
                self.assertFailedWith(res, "only http and https are allowed")
                self.assertNoFile()

    def test_redirect_to_file_is_refused(self):
        res = self.download("/redirect?to=file:///etc/passwd", {"sha256": "0" * 64})
        self.assertFailedWith(res, "redirected to a URL that is not http or https")
        self.assertNoFile()
        self.assertNotIn("root:", res.stdout)

    def test_not_found_is_not_retried(self):
        res = self.download("/status/404", {"sha256": "0" * 64})
        self.assertFailedWith(res, "answered HTTP 404")
        self.assertEqual(self.srv.count("/status/404"), 1)
        self.assertNoFile()

    def test_server_error_then_success(self):
        out = self.assertCompleted(self.download("/flaky/f1?size=7000&fails=1",
                                                 {"sha256": pattern_sha(7000)}))
        self.assertEqual(out["attempts"], 2)
        self.assertPattern("downloads/file.bin", 7000)

    def test_size_cap(self):
        res = self.download("/blob/a?size=100000", {"sha256": pattern_sha(100000), "max_bytes": 1000})
        self.assertFailedWith(res, "larger than the limit")
        self.assertNoFile()


class GetJson(FsapiCase):
    def setUp(self):
        super().setUp()
        self.srv = HttpServer()
        self.addCleanup(self.srv.close)

    def test_get_json(self):
        out = self.assertCompleted(self.run_lua(
            'local v = assert(http.get_json(args.url)); return { ok = v.ok, n = #v.items }',
            {"url": self.srv.url("/json?bytes=200")}))
        self.assertEqual(out["ok"], True)
        self.assertGreater(out["n"], 0)

    def test_get_json_failures(self):
        res = self.run_lua('local v, err = http.get_json(args.url, {max_bytes = 1000}); job.fail(err)',
                           {"url": self.srv.url("/json?bytes=100000")})
        self.assertFailedWith(res, "more than 1000 bytes")
        res = self.run_lua('local v, err = http.get_json(args.url); job.fail(err)',
                           {"url": self.srv.url("/blob/x?size=100")})
        self.assertFailedWith(res, "did not answer valid JSON")
        res = self.run_lua('local v, err = http.get_json(args.url); job.fail(err)',
                           {"url": self.srv.url("/status/403")})
        self.assertFailedWith(res, "HTTP 403")


if __name__ == "__main__":
    unittest.main()
