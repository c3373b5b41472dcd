#!/usr/bin/env python3
"""Resident memory of an idle `jobvisor agent` connected to the real jobvisor-cp, side by side
with `sleep` started at the same moment (docs/performance.md, issue 12's "idle agent RSS" row).

usage: bench_agent_rss.py BUILD_DIR [--wait S] [--proxy] [--update DOC]

Starts BUILD_DIR/examples/controlplane/jobvisor-cp on 127.0.0.1, one agent polling it every
3 s (short polls) over http://, and one over https:// (through a TLS front in this script that
forwards to the same jobvisor-cp; the agent verifies it against a test CA appended to the
system's CA bundle, so every handshake parses a full bundle), and `sleep`; waits --wait
seconds (default 30), then reads VmRSS, VmHWM (peak), RssFile, RssAnon (/proc/PID/status) and
PSS (smaps_rollup) of each, and the https agent's resident memory per mapped file (smaps).
--proxy sends both agents through an HTTP proxy (tests/lib/http_proxy.py: absolute-form
requests for http://, a CONNECT tunnel for https://).
--update replaces the text between <!-- bench_agent_rss:begin --> and <!-- bench_agent_rss:end -->.
"""
import argparse
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, "..", "lib")]
from agent_harness import agent_env  # noqa: E402
from benchdoc import replace_block  # noqa: E402
from cp_harness import AGENT_TOKENS, ControlPlane  # noqa: E402
from http_proxy import HttpProxy  # noqa: E402

TOP = 12


def kib_fields(path):
    out = {}
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                out[parts[0][:-1]] = int(parts[1])
    return out


def memory(pid):
    st = kib_fields(f"/proc/{pid}/status")
    ro = kib_fields(f"/proc/{pid}/smaps_rollup")
    return {k: st.get(k, 0) / 1024 for k in ("VmRSS", "VmHWM", "RssFile", "RssAnon")} | {"Pss": ro.get("Pss", 0) / 1024}


def per_file(pid):
    """Resident KiB per mapped file ([anon] for the rest), largest first."""
    agg, cur = {}, "[anon]"
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            if parts and "-" in parts[0] and not parts[0].endswith(":"):
                cur = parts[5] if len(parts) > 5 else "[anon]"
            elif parts and parts[0] == "Rss:":
                agg[cur] = agg.get(cur, 0) + int(parts[1])
    return sorted(agg.items(), key=lambda kv: -kv[1])


SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def make_certs(root):
    """A test CA, a certificate for 127.0.0.1 it signed, and a bundle: the system's plus it."""
    q = dict(check=True, capture_output=True, timeout=60, cwd=root)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-days", "2", "-subj", "/CN=bench-ca", "-keyout", "ca.key", "-out", "ca.pem"], **q)
    subprocess.run(["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-subj", "/CN=127.0.0.1", "-keyout", "srv.key", "-out", "srv.csr"], **q)
    with open(os.path.join(root, "ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\n")
    subprocess.run(["openssl", "x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                    "-CAcreateserial", "-days", "2", "-extfile", "ext", "-out", "srv.pem"], **q)
    bundle = os.path.join(root, "bundle.pem")
    with open(bundle, "w") as out:
        if os.path.exists(SYSTEM_BUNDLE):
            out.write(open(SYSTEM_BUNDLE).read())
        out.write(open(os.path.join(root, "ca.pem")).read())
    return os.path.join(root, "srv.pem"), os.path.join(root, "srv.key"), bundle


def tls_front(cert, key, backend_port):
    """A TLS listener on 127.0.0.1 forwarding each connection to the control plane. Returns its port."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    lsock = socket.create_server(("127.0.0.1", 0))

    def pump(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.close()
            except OSError:
                pass

    def serve():
        while True:
            try:
                raw, _ = lsock.accept()
                conn = ctx.wrap_socket(raw, server_side=True)
                back = socket.create_connection(("127.0.0.1", backend_port))
            except OSError:
                continue
            threading.Thread(target=pump, args=(conn, back), daemon=True).start()
            threading.Thread(target=pump, args=(back, conn), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return lsock.getsockname()[1]


def measure(build, wait, proxy=False):
    os.environ["JOBVISOR_CP_BIN"] = os.path.join(build, "examples", "controlplane", "jobvisor-cp")
    jv = os.path.join(build, "jobvisor")
    root = tempfile.mkdtemp(prefix="jv-bench-rss-")
    os.makedirs(os.path.join(root, "cp"))
    cp = ControlPlane(tmpdir=os.path.join(root, "cp"))
    agents, sleeper = [], None
    try:
        cp.start()
        token = os.path.join(root, "token")
        fd = os.open(token, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, (AGENT_TOKENS[cp.default_agent] + "\n").encode())
        os.close(fd)
        cert, key, bundle = make_certs(root)
        https_url = "https://127.0.0.1:%d" % tls_front(cert, key, cp.port)
        px = HttpProxy().start() if proxy else None
        via = {"PROXY": px.url()} if proxy else {"PROXY": "direct"}
        for name, url, extra in (("http", cp.url, via), ("https", https_url, {"TLS_CA_FILE": bundle, **via})):
            for d in ("data", "jobs"):
                os.makedirs(os.path.join(root, name, d))
            env = agent_env(url, token, os.path.join(root, name, "data"), os.path.join(root, name, "jobs"),
                            agent_id=cp.default_agent, POLL_INTERVAL="3", POLL_JITTER="0", LOG_LEVEL="info",
                            **extra)
            log = open(os.path.join(root, name, "agent.log"), "w")
            agents.append(subprocess.Popen([jv, "agent"], env=env, stdin=subprocess.DEVNULL,
                                           stdout=subprocess.DEVNULL, stderr=log))
        sleeper = subprocess.Popen(["sleep", str(int(wait) + 60)])
        time.sleep(wait)
        for name, a in zip(("http", "https"), agents):
            if a.poll() is not None:
                raise SystemExit("the agent exited:\n" + open(os.path.join(root, name, "agent.log")).read()[-2000:])
        polls = [open(os.path.join(root, n, "agent.log")).read().count("cannot reach") for n in ("http", "https")]
        if any(polls):
            raise SystemExit("an agent could not reach the control plane:\n" +
                             open(os.path.join(root, "https", "agent.log")).read()[-2000:])
        if proxy and not {"CONNECT", "POST"} <= set(px.methods()):
            raise SystemExit("the agents did not go through the proxy: %r" % px.requests[:5])
        return ([memory(a.pid) for a in agents], memory(sleeper.pid), per_file(agents[1].pid))
    finally:
        for p in agents + [sleeper]:
            if p and p.poll() is None:
                p.terminate()
                p.wait(20)
        cp.stop(check=False)
        shutil.rmtree(root, ignore_errors=True)


def table(agents, sleep, files, wait, proxy=False):
    via = " through an HTTP proxy (absolute-form http, CONNECT tunnel for https)" if proxy else ""
    out = [f"Measured {time.strftime('%Y-%m-%d')}: idle `jobvisor agent` polling the real `jobvisor-cp`{via} (loopback, 3 s short "
           f"polls; https through a TLS front, verified against the system CA bundle plus a test CA), "
           f"measured after {wait:.0f} s, beside `sleep` started at the same moment.", "",
           "| process | VmRSS | peak (VmHWM) | file pages | anon pages | PSS |", "| --- | --- | --- | --- | --- | --- |"]
    rows = (("`jobvisor agent`, idle, http://", agents[0]), ("`jobvisor agent`, idle, https://", agents[1]),
            ("`sleep`", sleep))
    for name, m in rows:
        out.append(f"| {name} | {m['VmRSS']:.2f} MiB | {m['VmHWM']:.2f} MiB | {m['RssFile']:.2f} MiB | "
                   f"{m['RssAnon']:.2f} MiB | {m['Pss']:.2f} MiB |")
    libs = [f for f, _ in files if ".so" in f]
    out += ["", f"The https agent maps {len(libs)} shared libraries; its resident memory by mapping "
            f"(largest {TOP}):", "", "| mapping | resident |", "| --- | --- |"]
    for name, kib in files[:TOP]:
        out.append(f"| `{os.path.basename(name) if name.startswith('/') else name}` | {kib / 1024:.2f} MiB |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build")
    ap.add_argument("--wait", type=float, default=30)
    ap.add_argument("--proxy", action="store_true")
    ap.add_argument("--update")
    a = ap.parse_args()
    agents, sleep, files = measure(os.path.abspath(a.build), a.wait, a.proxy)
    text = table(agents, sleep, files, a.wait, a.proxy)
    print(text)
    if a.update:
        replace_block(a.update, "bench_agent_rss", text, "Idle agent memory")


if __name__ == "__main__":
    main()
