#!/usr/bin/env python3
"""long_functions.py — list C functions longer than a limit (default 100 lines).

Counts braces, skipping comments, strings and character literals: a function
is a top-level '{' ... '}' block whose opening line (or the line before)
ends a parameter list. Length = lines from the signature's line to the
closing brace. Usage: tests/tools/long_functions.py [--max N] [dirs...]
(default dirs: supervisor lua examples/controlplane; tests are excluded)."""
import os
import re
import sys


def strip(text):
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            out.append(c + re.sub(r"[^\n]", " ", text[i + 1:j]) + c)
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def functions(path):
    lines = strip(open(path, encoding="utf-8", errors="replace").read()).split("\n")
    depth, start, name = 0, None, None
    for no, line in enumerate(lines, 1):
        for c in line:
            if c == "{":
                if depth == 0:
                    head = " ".join(lines[max(0, no - 3):no])
                    m = re.search(r"(\w+)\s*\([^;{}]*\)\s*\{?\s*$", head.split("{")[0] + "{") \
                        if ")" in head else None
                    if m and m.group(1) not in ("if", "for", "while", "switch"):
                        name = m.group(1)
                        start = no if line.lstrip().startswith("{") is False else no - 1
                    else:
                        name = None
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0 and name:
                    yield name, start, no
                    name = None


def main(argv):
    limit = 100
    if argv[:1] == ["--max"]:
        limit, argv = int(argv[1]), argv[2:]
    dirs = argv or ["supervisor", "lua", "examples/controlplane"]
    found = 0
    for d in dirs:
        for root, subdirs, files in os.walk(d):
            subdirs[:] = sorted(s for s in subdirs if s not in ("tests", "build", "node_modules"))
            for f in sorted(files):
                if not f.endswith(".c") or f.startswith("test_"):
                    continue
                p = os.path.join(root, f)
                for name, a, b in functions(p):
                    if b - a + 1 > limit:
                        print(f"{p}:{a}: {name} {b - a + 1} lines")
                        found += 1
    print(f"{found} function(s) over {limit} lines")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
