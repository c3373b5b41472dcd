"""What reaches the disk before a job publishes: run a job under strace and check its trace.

`traced_run()` runs `jobvisor run` under `strace -f -y` with the calls that change a file
system (writes, creations, removals, renames) and the calls that make changes durable
(fsync, fdatasync, syncfs). `check_trace()` replays the trace and keeps, for every path
under the instance directory, the changes not yet known to be on disk:

  * a write, truncate, chmod or utimens of a file is made durable by an fsync/fdatasync of
    that file or by a syncfs;
  * a new, removed or renamed directory entry is made durable by an fsync of its directory
    or by a syncfs.

A rename whose new name lies outside `.jobvisor/` publishes a tree (or a file). At that
instant every change inside the tree (or, for a file, to its data) must already be
durable: otherwise a power cut after the rename can leave the published name holding empty
or truncated files. When the job process ends, no change outside `.jobvisor/` may be
pending: a job that reported COMPLETED has everything it published on disk.

Renames move pending changes with the names they move, so a file written in staging,
renamed within staging and then published is still tracked. A syncfs counts for the
changes on the file system of its descriptor; the tests keep an instance on one file
system.
"""
import os
import re
import subprocess

TRACED = ("fsync,fdatasync,syncfs,sync,rename,renameat,renameat2,open,creat,openat,openat2,"
          "mkdir,mkdirat,symlink,symlinkat,link,linkat,unlink,unlinkat,rmdir,write,writev,"
          "pwrite64,pwritev,pwritev2,ftruncate,truncate,fallocate,fchmod,fchmodat,utimensat,"
          "copy_file_range,sendfile")

_LINE = re.compile(r"^(\d+)\s+(.*)$")
_CALL = re.compile(r"^(\w+)\((.*)\)\s+=\s+(-?\d+|\?)(.*)$")
_RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>(.*)$")


def traced_run(argv, trace_path, timeout=300):
    """Run argv under strace; returns the CompletedProcess of strace (stdout/stderr of argv)."""
    cmd = ["strace", "-f", "-y", "-qq", "-s", "4096", "-X", "abbrev", "-e", "signal=none",
           "-e", "trace=" + TRACED, "-o", trace_path, "--"] + list(argv)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _split_args(s):
    """Top-level arguments of a strace call, respecting quotes, braces and fd paths."""
    out, cur, depth, i = [], [], 0, 0
    while i < len(s):
        c = s[i]
        if c == '"':
            j = i + 1
            while j < len(s) and s[j] != '"':
                j += 2 if s[j] == "\\" else 1
            cur.append(s[i:j + 1])
            i = j + 1
            continue
        if c == "<" and cur and "".join(cur).strip().isdigit():
            j = s.index(">", i)
            cur.append(s[i:j + 1])
            i = j + 1
            continue
        if c in "{[(":
            depth += 1
        elif c in "}])":
            depth -= 1
        if c == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(c)
        i += 1
    if cur:
        out.append("".join(cur).strip())
    return out


def _unquote(a):
    if not (a.startswith('"') and a.endswith('"')):
        return None
    body = a[1:-1]
    return body.encode("latin-1", "backslashreplace").decode("unicode_escape")


def _fd_path(a):
    m = re.match(r"^-?\d+<(.*)>$", a)
    if m:
        p = m.group(1)
        return p[:-len("(deleted)")] if p.endswith("(deleted)") else p
    return None


def _at(dirarg, namearg):
    name = _unquote(namearg)
    if name is None:
        return None
    if name.startswith("/"):
        return os.path.normpath(name)
    d = _fd_path(dirarg)
    if d is None:
        return None
    return os.path.normpath(os.path.join(d, name)) if name else d


class Pending:
    """A change not yet known to be durable."""

    def __init__(self, kind, path, what, line):
        self.kind = kind  # "data" (file content/attributes) or "entry" (a name in a directory)
        self.path = path
        self.what = what
        self.line = line

    @property
    def parent(self):
        return os.path.dirname(self.path)

    def __repr__(self):
        return f"{self.kind} change of '{self.path}' ({self.what}, trace line {self.line})"


class TraceCheck:
    def __init__(self, root):
        self.root = os.path.realpath(root)
        self.jv = os.path.join(self.root, ".jobvisor")
        self.pending = []
        self.publishes = []  # (src, dst, flags, line)
        self.violations = []
        self.syncfs = 0
        self.fsyncs = 0

    def under(self, p, top):
        return p == top or p.startswith(top + "/")

    def mine(self, p):
        return p is not None and self.under(p, self.root)

    def add(self, kind, path, what, line):
        if self.mine(path):
            self.pending.append(Pending(kind, path, what, line))

    def durable_fs(self, path):
        if self.mine(path):
            self.pending = []

    def durable_fd(self, path):
        self.pending = [m for m in self.pending
                        if not ((m.kind == "data" and m.path == path)
                                or (m.kind == "entry" and m.parent == path))]

    def drop_under(self, path):
        self.pending = [m for m in self.pending if not (m.kind == "data" and self.under(m.path, path))]

    def move(self, src, dst, exchange):
        def repath(p):
            if self.under(p, src):
                return dst + p[len(src):]
            if exchange and self.under(p, dst):
                return src + p[len(dst):]
            return p
        for m in self.pending:
            m.path = repath(m.path)

    def check_publish(self, src, dst, flags, line):
        self.publishes.append((src, dst, flags, line))
        bad = [m for m in self.pending
               if (m.kind == "data" and m.path == src) or m.path.startswith(src + "/")]
        for m in bad:
            self.violations.append(
                f"trace line {line}: '{os.path.relpath(src, self.root)}' published as "
                f"'{os.path.relpath(dst, self.root)}' before its {m!r} reached the disk")

    def rename(self, src, dst, flags, line):
        if not (self.mine(src) and self.mine(dst)):
            return
        exchange = "RENAME_EXCHANGE" in flags
        if not self.under(dst, self.jv):
            self.check_publish(src, dst, flags, line)
        if exchange and not self.under(src, self.jv):
            self.check_publish(dst, src, flags, line)
        if not exchange:
            self.drop_under(dst)  # what the rename replaced is gone, written or not
        self.move(src, dst, exchange)
        self.add("entry", dst, "renamed here", line)
        self.add("entry", src, "renamed away", line)

    def finish(self):
        for m in self.pending:
            if not self.under(m.path, self.jv):
                self.violations.append(f"at the end of the job: {m!r} never reached the disk")

    def feed(self, name, args, ret, line):
        ok = ret != "?" and not ret.startswith("-")
        if not ok:
            return
        a = _split_args(args)
        if name == "syncfs":
            self.syncfs += 1
            self.durable_fs(_fd_path(a[0]))
        elif name == "sync":
            self.syncfs += 1
            self.pending = []
        elif name in ("fsync", "fdatasync"):
            self.fsyncs += 1
            p = _fd_path(a[0])
            if p:
                self.durable_fd(p)
        elif name in ("write", "writev", "pwrite64", "pwritev", "pwritev2", "ftruncate", "fallocate",
                      "fchmod"):
            self.add("data", _fd_path(a[0]), name, line)
        elif name in ("copy_file_range", "sendfile"):
            self.add("data", _fd_path(a[2] if name == "copy_file_range" else a[0]), name, line)
        elif name == "truncate":
            self.add("data", _unquote(a[0]), name, line)
        elif name in ("fchmodat", "utimensat"):
            p = _at(a[0], a[1]) if a[1] != "NULL" else _fd_path(a[0])
            self.add("data", p, name, line)
        elif name in ("openat", "openat2", "open", "creat"):
            if name == "openat2":
                path, flags = _at(a[0], a[1]), a[2]
            elif name == "openat":
                path, flags = _at(a[0], a[1]), a[2]
            else:
                path, flags = _unquote(a[0]), (a[1] if name == "open" else "O_CREAT")
            if "O_CREAT" in flags or "O_TRUNC" in flags:
                rp = _fd_path(ret) or path
                self.add("entry", rp, name + " O_CREAT", line)
                if "O_TRUNC" in flags:
                    self.add("data", rp, name + " O_TRUNC", line)
        elif name in ("mkdirat", "mkdir"):
            self.add("entry", _at(a[0], a[1]) if name == "mkdirat" else _unquote(a[0]), name, line)
        elif name in ("symlinkat", "symlink"):
            self.add("entry", _at(a[1], a[2]) if name == "symlinkat" else _unquote(a[1]), name, line)
        elif name in ("linkat", "link"):
            self.add("entry", _at(a[2], a[3]) if name == "linkat" else _unquote(a[1]), name, line)
        elif name in ("unlinkat", "unlink", "rmdir"):
            p = _at(a[0], a[1]) if name == "unlinkat" else _unquote(a[0])
            if self.mine(p):
                self.drop_under(p)
                self.add("entry", p, name, line)
        elif name in ("renameat", "renameat2"):
            self.rename(_at(a[0], a[1]), _at(a[2], a[3]), a[4] if len(a) > 4 else "", line)
        elif name == "rename":
            self.rename(_unquote(a[0]), _unquote(a[1]), "", line)


def check_trace(trace_path, instance_root, make=TraceCheck):
    """Replay a trace; returns the TraceCheck (violations, publishes, counts). make(root)
    builds the checker: a subclass may watch more."""
    tc = make(instance_root)
    unfinished = {}
    with open(trace_path, errors="replace") as f:
        for n, raw in enumerate(f, 1):
            m = _LINE.match(raw.rstrip("\n"))
            if not m:
                continue
            pid, body = m.group(1), m.group(2)
            if body.endswith("<unfinished ...>"):
                unfinished[pid] = body[:-len("<unfinished ...>")].rstrip()
                continue
            r = _RESUMED.match(body)
            if r:
                body = unfinished.pop(pid, r.group(1) + "(") + r.group(2)
            c = _CALL.match(body)
            if not c:
                continue
            name, args, ret, rest = c.groups()
            # `= 5</path>`: keep the returned descriptor's path for creations
            ret_full = ret + rest.split(" ")[0] if rest.startswith("<") else ret
            tc.feed(name, args, ret_full, n)
    tc.finish()
    return tc
