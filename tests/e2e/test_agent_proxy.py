"""The real agent behind an egress HTTP proxy (docs/operations.md, "Proxies").

The proxy is tests/lib/http_proxy.py on 127.0.0.1: absolute-form requests for an http://
control plane, a CONNECT tunnel for https:// (the real jobvisor-cp with --tls-cert, its name
verified through the tunnel). The proxy comes from the `proxy` setting or from the environment
as curl reads it; a proxy that is down or refuses the tunnel is a control plane that cannot be
reached: a clear log line, backoff, and the agent recovers when the proxy does."""
import base64
import os
import shutil
import tempfile
import unittest
from unittest import mock

from agent_harness import AgentTestCase
from cp_harness import AGENT_TOKENS, ControlPlane
from http_proxy import HttpProxy
from tls_pki import OPENSSL, Pki

CP_BIN = os.environ.get("JOBVISOR_CP_BIN", "")
PROXY_VARS = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY",
              "no_proxy", "NO_PROXY")


class ProxyCase(AgentTestCase):
    def proxy(self, auth=None, port=0):
        px = HttpProxy(auth).start(port)
        self.addCleanup(px.stop)
        return px

    def start_agent_env(self, env_vars, **overrides):
        """The agent with exactly these proxy variables in its environment."""
        clean = {k: v for k, v in os.environ.items() if k not in PROXY_VARS}
        with mock.patch.dict(os.environ, {**clean, **env_vars}, clear=True):
            return self.start_agent(**overrides)


class HttpControlPlane(ProxyCase):
    def test_setting_with_credentials_absolute_form_and_no_password_in_the_log(self):
        px = self.proxy(auth="Basic " + base64.b64encode(b"jv:s3cr@t").decode())
        p = self.start_agent_env({}, PROXY=px.url("jv:s3cr%40t"), POLL_WAIT=2)
        rid = self.cp.add_job("SLEEPY", params={"steps": 2, "delay": 0.05})
        self.cp.wait_result(rid)
        self.assert_delivered_once(rid, "COMPLETED")
        posts = [(t, h) for m, t, h in px.requests if m == "POST"]
        self.assertTrue(posts)
        for target, headers in posts:
            self.assertTrue(target.startswith(self.cp.url + "/v1/"), target)
            self.assertEqual(headers["proxy-authorization"], px.auth)
        self.assertIn("requests to %s go through the proxy 127.0.0.1:%d (the 'proxy' setting)"
                      % (self.cp.url, px.port), self.log())
        self.assertEqual(self.stop_agent(p), 0)
        self.assertNotIn("s3cr", self.log())

    def test_environment_http_proxy(self):
        px = self.proxy()
        p = self.start_agent_env({"http_proxy": px.url()}, POLL_WAIT=2)
        rid = self.cp.add_job("SLEEPY", params={"steps": 1, "delay": 0.01})
        self.cp.wait_result(rid)
        self.assertIn("POST", px.methods())
        self.assertEqual(self.stop_agent(p), 0)

    def test_no_proxy_names_the_control_plane(self):
        px = self.proxy()
        px.stop()  # down: only a direct connection can work
        p = self.start_agent_env({"http_proxy": px.url(), "NO_PROXY": "localhost, 127.0.0.0/8"}, POLL_WAIT=2)
        rid = self.cp.add_job("SLEEPY", params={"steps": 1, "delay": 0.01})
        self.cp.wait_result(rid)
        self.assertNotIn("proxy", self.log())
        self.assertEqual(self.stop_agent(p), 0)

    def test_a_proxy_that_is_down_is_retried_until_it_is_back(self):
        px = self.proxy()
        port = px.port
        px.stop()
        p = self.start_agent_env({}, PROXY=px.url(), POLL_WAIT=2, BACKOFF_MAX=1)
        self.wait_log("cannot reach the control plane: cannot connect to the proxy 127.0.0.1 port %d: "
                      "Connection refused" % port)
        self.assertIsNone(p.poll(), "the agent exited")
        px = self.proxy(port=port)
        rid = self.cp.add_job("SLEEPY", params={"steps": 1, "delay": 0.01})
        self.cp.wait_result(rid, timeout=30)
        self.assert_delivered_once(rid, "COMPLETED")
        self.assertEqual(self.stop_agent(p), 0)

    def test_an_unusable_environment_proxy_is_reported_and_the_agent_keeps_running(self):
        p = self.start_agent_env({"http_proxy": "https://u:s3cret@proxy.example:443"}, POLL_WAIT=2,
                                 BACKOFF_MAX=1)
        self.wait_log("requests to %s will fail: the proxy in http_proxy: proxy scheme 'https' is not "
                      "supported (only http:// proxies)" % self.cp.url)
        self.wait_log("cannot reach the control plane: the proxy in http_proxy")
        self.assertIsNone(p.poll(), "the agent exited")
        self.assertNotIn("s3cret", self.log())
        self.assertEqual(self.stop_agent(p), 0)

    def test_a_bad_proxy_setting_is_refused_at_start(self):
        r = self.run_agent_once(PROXY="socks5://u:s3cret@127.0.0.1:1080")
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("'proxy': proxy scheme 'socks5' is not supported", r.stderr)
        self.assertNotIn("s3cret", r.stderr + r.stdout)


@unittest.skipUnless(CP_BIN and os.path.exists(CP_BIN), "needs JOBVISOR_CP_BIN")
@unittest.skipUnless(OPENSSL, "needs the openssl command (Debian package openssl)")
class HttpsThroughTunnel(ProxyCase):
    AGENT = "agent-1"

    def setUp(self):
        super().setUp()
        self.cp.stop()  # the fake is not used here
        self.pki_dir = tempfile.mkdtemp(prefix="jv-proxy-pki-")
        self.addCleanup(shutil.rmtree, self.pki_dir, True)
        self.pki = Pki(self.pki_dir)
        cert, key = self.pki.server("server")
        self.real = ControlPlane(["--tls-cert", cert, "--tls-key", key, "--job-types", "SLEEPY",
                                  "--poll-interval", "1", "--retry-backoff", "1"])
        self.real.ssl_context = self.pki.context()
        self.real.start()
        self.addCleanup(self.real.close)
        with open(self.token_file, "w") as f:
            f.write(AGENT_TOKENS[self.AGENT] + "\n")
        # The certificate names localhost and 127.0.0.1; the agent must check the former.
        self.url = "https://localhost:%d" % self.real.port

    def test_connect_tunnel_verified_against_the_control_planes_name_and_kept(self):
        px = self.proxy()
        p = self.start_agent_env({"HTTPS_PROXY": px.url()}, URL=self.url, AGENT_ID=self.AGENT,
                                 TLS_CA_FILE=self.pki.ca, POLL_INTERVAL=0.3, POLL_WAIT=0)
        job = self.real.create_job(agent=self.AGENT, type_="SLEEPY", params={"steps": 3, "delay": 0.05})
        self.real.wait_job(job["jobId"], lambda j: j["status"] == "COMPLETED", 30, "COMPLETED")
        self.assertEqual(set(px.methods()), {"CONNECT"}, px.requests)
        self.assertIn("requests to %s go through the proxy 127.0.0.1:%d (HTTPS_PROXY, CONNECT)"
                      % (self.url, px.port), self.log())
        self.assertEqual(px.requests[0][1], "localhost:%d" % self.real.port)
        # jobvisor-cp answers with Connection: close, so each request opens its own tunnel here;
        # test_agent_transport_proxy.c shows a kept tunnel carrying several requests.
        self.assertEqual(self.stop_agent(p), 0)

    def test_a_proxy_refusing_the_tunnel_is_reported_and_survived(self):
        px = self.proxy(auth="Basic " + base64.b64encode(b"jv:right").decode())
        p = self.start_agent_env({"https_proxy": px.url("jv:wr0ngpw")}, URL=self.url, AGENT_ID=self.AGENT,
                                 TLS_CA_FILE=self.pki.ca, POLL_INTERVAL=0.3, POLL_WAIT=0, BACKOFF_MAX=1)
        self.wait_log("refused the tunnel to localhost port %d: HTTP 407: it refused the user and password"
                      % self.real.port)
        self.assertIsNone(p.poll(), "the agent exited")
        self.assertNotIn("wr0ngpw", self.log())
        self.assertEqual(self.stop_agent(p), 0)


if __name__ == "__main__":
    unittest.main()
