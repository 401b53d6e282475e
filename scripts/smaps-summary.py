#!/usr/bin/env python3
"""smaps-summary.py PID — where a process's resident memory is, from /proc/PID/smaps.

Groups the mappings into: the binary (by file), shared libraries, [heap] (the main arena),
malloc arenas of other threads (anonymous mappings aligned to glibc's 64 MiB HEAP_MAX_SIZE),
thread stacks (an anonymous rw mapping right above a small no-access guard page), other
anonymous mappings (large allocations glibc serves by mmap, e.g. Argon2's working memory) and
the kernel's [stack]/[vdso]/... Guard pages count as "other anonymous" (never resident). Prints size and RSS per group (KiB), and for thread stacks the
distribution of resident KiB per stack, so a stack size's real cost can be read off.

Linux glibc layout only; an approximation, not an accounting.
"""
import collections
import re
import sys

HEAP_MAX = 64 << 20


def mappings(pid):
    cur = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            m = re.match(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$", line)
            if m:
                if cur:
                    yield cur
                cur = {
                    "start": int(m[1], 16),
                    "end": int(m[2], 16),
                    "perms": m[3],
                    "name": m[4].strip(),
                    "rss": 0,
                }
            elif line.startswith("Rss:") and cur:
                cur["rss"] = int(line.split()[1])
    if cur:
        yield cur


def classify(maps, exe):
    prev = None
    for m in maps:
        name, size = m["name"], (m["end"] - m["start"]) >> 10
        if name == exe:
            kind = "binary " + exe.rsplit("/", 1)[-1]
        elif name.startswith("/"):
            kind = "libraries"
        elif name == "[heap]":
            kind = "[heap] (main arena)"
        elif name.startswith("["):
            kind = name
        elif (
            "rw" in m["perms"]
            and prev
            and prev["name"] == ""
            and prev["perms"].startswith("---")
            and prev["end"] == m["start"]
            and (prev["end"] - prev["start"]) <= 64 << 10
        ):
            # Rust gives every thread a small signal stack (guard page + 8 KiB or so).
            kind = "thread stacks" if size > 32 else "signal stacks (Rust)"
        elif m["start"] % HEAP_MAX == 0 or (
            prev and prev["kind"].startswith("malloc arenas") and prev["end"] == m["start"]
        ):
            kind = "malloc arenas (threads)"
        else:
            kind = "other anonymous"
        m["kind"], m["size"] = kind, size
        prev = m
        yield m


def main():
    pid = sys.argv[1]
    exe = open(f"/proc/{pid}/cmdline").read().split("\0")[0]
    try:
        import os

        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        pass
    groups = collections.OrderedDict()
    stacks = []
    for m in classify(mappings(pid), exe):
        g = groups.setdefault(m["kind"], [0, 0, 0])
        g[0] += 1
        g[1] += m["size"]
        g[2] += m["rss"]
        if m["kind"] == "thread stacks":
            stacks.append((m["size"], m["rss"]))
    total = sum(g[2] for g in groups.values())
    print(f"{'group':32} {'maps':>6} {'size KiB':>10} {'RSS KiB':>9}")
    for kind, (n, size, rss) in sorted(groups.items(), key=lambda kv: -kv[1][2]):
        print(f"{kind:32} {n:6} {size:10} {rss:9}")
    print(f"{'total':32} {'':6} {'':10} {total:9}")
    if stacks:
        by = collections.Counter(stacks)
        print("thread stacks: count x (size KiB, resident KiB)")
        for (size, rss), n in sorted(by.items()):
            print(f"  {n:6} x ({size}, {rss})")


if __name__ == "__main__":
    main()
