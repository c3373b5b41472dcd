#!/usr/bin/env python3
"""Whole data jobs through the real `jobvisor run`, alternately with the plain-tool pipeline
that does the same work (docs/performance.md, "Data jobs against their peers").

usage: bench_jobs.py JOBVISOR_BIN [--mb N] [--reps N] [--only ROW,...] [--also LABEL=BIN]
                    [--update DOC]

A world shaped like a game world (region files of ~5 MiB, 45 % incompressible, plus
thousands of small JSON/TOML files) of N MiB (default 1024; env BENCH_MB) is generated
once. Each round runs every row's two commands in an order that rotates from round to
round; before each timed command the state is reset untimed (outputs moved aside, `sync`), so
both sides start from the same page cache and an idle disk. Outputs are moved into a
graveyard and deleted only at the end: ext4 skips recently deleted inodes when it allocates
new ones, so deleting a 4,000-file tree right before a timed extraction slows that extraction's
file creation several-fold (measured: ~0.5 ms per create instead of ~10 us). Durability is part of every
peer (`sync -f` on what it wrote), as it is of every job. Medians of --reps rounds
(default 5; env BENCH_REPS) and the ratio jobvisor / peer are printed as a Markdown table;
--update replaces the text between <!-- bench_jobs:begin --> and <!-- bench_jobs:end -->.
--also LABEL=BIN times another build (e.g. main before a change) in the same rounds, its turn
rotating with the other two, and adds its median and ratio to the table; time per GiB of world
is printed too, so runs of different --mb can be compared for linearity.
"""
import argparse
import functools
import hashlib
import http.server
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

INST = "bench"


def gen_world(root, mb, seed=1):
    rng = random.Random(seed)
    os.makedirs(f"{root}/region")
    text = b"".join(b"TAG_Compound{id:minecraft:stone,x:%d,y:%d}" % (i, i * 7) for i in range(200))
    small_total = 0
    counts = {"playerdata": 1500, "stats": 1500, "advancements": 1000}
    scale = max(mb / 1024, 0.05)
    for d, count in counts.items():
        os.makedirs(f"{root}/{d}")
        for k in range(int(count * scale)):
            size = rng.randint(300, 12000)
            body = (b'{"uuid":"%08d","score":%d,' % (k, rng.randint(0, 10**6))) * (size // 30 + 1)
            with open(f"{root}/{d}/{k:05d}.json", "wb") as f:
                f.write(body[:size])
            small_total += size
    os.makedirs(f"{root}/config")
    for k in range(200):
        with open(f"{root}/config/mod{k}.toml", "w") as f:
            f.write(f"[mod{k}]\nenabled = true\nlevel = {k}\n" * 20)
    target = mb * (1 << 20) - small_total
    i = 0
    while target > 0:
        n = rng.randint(1200, 1500)
        parts = []
        for _ in range(n):
            if rng.random() < 0.45:
                parts.append(rng.randbytes(4096))
            else:
                off = rng.randrange(0, len(text) - 4096)
                parts.append(text[off:off + 4096])
        blob = b"".join(parts)[:max(target, 4096)]
        with open(f"{root}/region/r.{i % 15}.{i // 15}.mca", "wb") as f:
            f.write(blob)
        target -= len(blob)
        i += 1


def sh(cmd, **kw):
    subprocess.run(cmd, shell=True, check=True, **kw)


def timed(fn):
    sh("sync")
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class Bench:
    def __init__(self, jv, mb, work):
        self.jv = jv
        self.work = work
        self.data = os.path.join(work, "data")
        self.inst = os.path.join(self.data, "instances", INST)
        self.peer = os.path.join(work, "peer")
        self.grave = os.path.join(work, "grave")
        os.makedirs(self.peer)
        os.makedirs(self.inst)
        os.makedirs(self.grave)
        gen_world(os.path.join(self.inst, "data"), mb)
        self.seq = 0

    def job(self, what, params, instance=INST):
        # self.jv is the build whose turn it is (main() sets it before each timed command)
        p = subprocess.run([self.jv, "run", what, "--instance", instance, "--data-dir", self.data,
                            "--params", json.dumps(params), "--json"],
                           capture_output=True, text=True)
        last = json.loads(p.stdout.strip().splitlines()[-1])
        if last.get("status") != "COMPLETED":
            raise SystemExit(f"{what} failed: {last} {p.stderr[-2000:]}")
        return last["output"]

    def bury(self, path):
        """Move path out of the way (deleted at the end, see the module doc)."""
        if os.path.lexists(path):
            self.seq += 1
            os.rename(path, os.path.join(self.grave, f"{self.seq}-{os.path.basename(path)}"))

    def clean_trash(self):
        self.bury(os.path.join(self.inst, ".jobvisor", "trash"))

    # --- rows: each is (setup, run) for jobvisor and for the peer ---

    def manifests(self, visible):
        """Hide every backup manifest (a first backup: no digests to reuse) or bring them back."""
        bdir, held = os.path.join(self.inst, "backups"), os.path.join(self.work, "held")
        os.makedirs(held, exist_ok=True)
        src, dst = (held, bdir) if visible else (bdir, held)
        for n in os.listdir(src):
            if n.endswith(".json"):
                os.rename(os.path.join(src, n), os.path.join(dst, n))

    def drop_test_backups(self):
        for d in (os.path.join(self.inst, "backups"), os.path.join(self.work, "held")):
            for n in os.listdir(d) if os.path.isdir(d) else []:
                if n.startswith("t"):
                    self.bury(os.path.join(d, n))

    def backup_jv(self):
        """A first backup: no earlier manifest to take digests from."""
        self.drop_test_backups()
        self.manifests(visible=False)
        self.clean_trash()
        self.seq += 1
        bid = f"t{self.seq}"
        return lambda: self.job("BACKUP_INSTANCE", {"backupId": bid})

    def backup_peer(self):
        out = os.path.join(self.peer, "b.tar.zst")
        self.bury(out)
        return lambda: sh(f"tar -cf - -C {self.inst} data | zstd -q -T0 -3 -o {out} && sync -f {out}")

    def restore_jv(self):
        self.manifests(visible=True)
        self.clean_trash()
        return lambda: self.job("RESTORE_BACKUP", {"backupId": "base"})

    def restore_peer(self):
        new = os.path.join(self.peer, "new")
        self.bury(new)
        os.makedirs(new)
        arch = os.path.join(self.inst, "backups", "base.tar.zst")
        return lambda: sh(f"zstd -q -dc {arch} | tar -xf - -C {new} && sync -f {new}")

    def verify_jv(self):
        self.manifests(visible=True)
        return lambda: self.job("VERIFY_BACKUP", {"backupId": "base"})

    def verify_peer(self):
        arch = os.path.join(self.inst, "backups", "base.tar.zst")
        return lambda: sh(f"zstd -q -dc {arch} | sha256sum >/dev/null")

    def install_jv(self):
        self.bury(os.path.join(self.data, "instances", "ins"))
        self.bury(os.path.join(self.data, "cache"))
        params = {"source": {"url": self.pkg_url, "sha256": self.pkg_sha}, "build": "b1",
                  "instance": {"command": ["${build}/server"], "cwd": "data"}}
        return lambda: self.job("INSTALL_SERVER", params, instance="ins")

    def install_peer(self):
        d = os.path.join(self.peer, "install")
        self.bury(d)
        os.makedirs(os.path.join(d, "b1"))
        return lambda: sh(
            f"cd {d} && curl -sf -o P {self.pkg_url} && echo '{self.pkg_sha}  P' | sha256sum -c --quiet"
            f" && tar -xf P -C b1 && sync -f b1")

    def backup2_jv(self):
        """A second backup of the unchanged world (the first one, untimed, right before)."""
        first = self.backup_jv()
        first()
        self.clean_trash()
        self.seq += 1
        bid = f"t{self.seq}"
        return lambda: self.job("BACKUP_INSTANCE", {"backupId": bid})

    def serve(self, root):
        class Quiet(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *a):
                pass
        handler = functools.partial(Quiet, directory=root)
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        return srv

    def prepare(self, rows, pkg_mb):
        self.job("BACKUP_INSTANCE", {"backupId": "base"})
        if "install" in rows:
            www = os.path.join(self.work, "www")
            tree = os.path.join(self.work, "pkgtree")
            gen_world(tree, pkg_mb, seed=2)
            with open(os.path.join(tree, "server"), "w") as f:
                f.write("#!/bin/sh\nexec sleep 1000\n")
            os.chmod(os.path.join(tree, "server"), 0o755)
            os.makedirs(www)
            pkg = os.path.join(www, "pkg.tar.zst")
            sh(f"tar -cf - -C {tree} . | zstd -q -T0 -3 -o {pkg}")
            self.bury(tree)
            h = hashlib.sha256()
            with open(pkg, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            self.pkg_sha = h.hexdigest()
            self.srv = self.serve(www)
            self.pkg_url = f"http://127.0.0.1:{self.srv.server_address[1]}/pkg.tar.zst"


ROWS = [
    ("backup", "BACKUP_INSTANCE", "backup_jv", "backup_peer",
     "`tar -cf - data | zstd -T0 -3 -o X && sync -f X`"),
    ("backup2", "BACKUP_INSTANCE, 2nd of an unchanged world", "backup2_jv", "backup_peer",
     "same peer as the first backup"),
    ("restore", "RESTORE_BACKUP", "restore_jv", "restore_peer",
     "`zstd -dc X | tar -xf - -C new && sync -f new`"),
    ("install", "INSTALL_SERVER (package of PKG MB)", "install_jv", "install_peer",
     "`curl -o P && sha256sum -c && tar -xf P && sync -f`"),
    ("verify", "VERIFY_BACKUP", "verify_jv", "verify_peer", "`zstd -dc X | sha256sum`"),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("jobvisor")
    ap.add_argument("--mb", type=int, default=int(os.environ.get("BENCH_MB", "1024")))
    ap.add_argument("--pkg-mb", type=int, default=int(os.environ.get("BENCH_PKG_MB", "206")))
    ap.add_argument("--reps", type=int, default=int(os.environ.get("BENCH_REPS", "5")))
    ap.add_argument("--only", default="")
    ap.add_argument("--also", help="LABEL=BIN: another build timed in the same rounds")
    ap.add_argument("--update")
    a = ap.parse_args()
    builds = [("jobvisor", os.path.abspath(a.jobvisor))]
    if a.also:
        label, _, path = a.also.partition("=")
        if not label or not os.access(path, os.X_OK):
            raise SystemExit(f"--also wants LABEL=BIN with an executable BIN, not {a.also!r}")
        builds.append((label, os.path.abspath(path)))
    for tool in ("tar", "zstd", "curl", "sha256sum", "sync"):
        if not shutil.which(tool):
            raise SystemExit(f"missing {tool}")
    rows = [r for r in ROWS if not a.only or r[0] in a.only.split(",")]
    work = tempfile.mkdtemp(prefix="jv-bench-jobs.", dir=os.environ.get("BENCH_DIR", "/var/tmp"))
    b = None
    try:
        print(f"generating a {a.mb} MiB world in {work} ...", file=sys.stderr)
        b = Bench(os.path.abspath(a.jobvisor), a.mb, work)
        b.prepare({r[0] for r in rows}, a.pkg_mb)
        nside = len(builds) + 1  # the builds, then the peer
        times = {r[0]: tuple([] for _ in range(nside)) for r in rows}
        for rnd in range(a.reps):
            for key, _, jv, peer, _ in rows:
                sides = [(i, bin_, getattr(b, jv)) for i, (_, bin_) in enumerate(builds)]
                sides.append((nside - 1, None, getattr(b, peer)))
                k = rnd % nside
                sides = sides[k:] + sides[:k]
                if rnd // nside % 2:
                    sides.reverse()
                for idx, bin_, setup in sides:
                    if bin_:
                        b.jv = bin_
                    t = timed(setup())
                    times[key][idx].append(t)
                print(f"round {rnd + 1}/{a.reps} {key}: " + ", ".join(
                    f"{name} {times[key][i][-1]:.2f} s" for i, name in
                    enumerate([n for n, _ in builds] + ["peer"])), file=sys.stderr)
        gib = a.mb / 1024
        extra_h = "".join(f" {n} | {n} ratio |" for n, _ in builds[1:])
        out = [f"World: {a.mb} MiB ({sum(len(f) for _, _, f in os.walk(os.path.join(b.inst, 'data')))} "
               f"files); median of {a.reps} rounds, the sides taking turns in a rotating order.", "",
               f"| job | jobvisor | peer | peer command | ratio | jobvisor s/GiB |{extra_h}",
               "| --- | --- | --- | --- | --- | --- |" + " --- | --- |" * (len(builds) - 1)]
        for key, label, _, _, peer in rows:
            meds = [statistics.median(t) for t in times[key]]
            j, p = meds[0], meds[-1]
            cell = peer.replace("|", "\\|")
            others = "".join(f" {m:.2f} s | {m / p:.2f}x |" for m in meds[1:-1])
            out.append(f"| {label.replace('PKG', str(a.pkg_mb))} | {j:.2f} s | {p:.2f} s | {cell} | "
                       f"{j / p:.2f}x | {j / gib:.2f} |{others}")
        if "backup" in times and "backup2" in times:
            j1, j2 = statistics.median(times["backup"][0]), statistics.median(times["backup2"][0])
            out.append("")
            out.append(f"Second backup of an unchanged world / first backup: {j2 / j1:.2f}x.")
        load = os.getloadavg()
        out.append("")
        out.append(f"Load average at the end: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min).")
        table = "\n".join(out)
        print(table)
        if a.update:
            text = open(a.update).read()
            beg, end = "<!-- bench_jobs:begin -->", "<!-- bench_jobs:end -->"
            if beg in text:
                i, k = text.index(beg) + len(beg), text.index(end)
                text = text[:i] + "\n" + table + "\n" + text[k:]
            else:
                text += f"\n## Data jobs against their peers\n\n{beg}\n{table}\n{end}\n"
            open(a.update, "w").write(text)
    finally:
        if b is not None and getattr(b, "srv", None):
            b.srv.shutdown()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
