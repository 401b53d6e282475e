#!/usr/bin/env python3
"""stack-depth.py PID [SIZE_KIB] [--max-kib N] — how deep a process's thread stacks have ever been used.

For each thread stack of SIZE_KIB (default 256, `worker_stack_size`), reads its pages from
/proc/PID/pagemap and /proc/PID/mem (root) and prints, grouped: the resident pages and the
deepest non-zero word, in bytes from the stack's top. A fresh stack page is zero-filled, so the
deepest non-zero word is the deepest any call has reached; a page is resident once touched.
Thread stacks are told apart by size only; an approximation, not an accounting.
With --max-kib N, exits 1 when any of those stacks has more than N KiB resident.
"""
import collections
import struct
import sys

PAGE = 4096


def stacks(pid, size):
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            fields = line.split()
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if end - start == size and fields[1].startswith("rw") and len(fields) == 5:
                yield start, end


def depth(pid, start, end):
    resident, deepest = [], None
    with open(f"/proc/{pid}/pagemap", "rb") as pm, open(f"/proc/{pid}/mem", "rb") as mem:
        for page in range(start, end, PAGE):
            pm.seek(page // PAGE * 8)
            if not struct.unpack("Q", pm.read(8))[0] >> 63:
                continue
            resident.append((end - page) // 1024)
            if deepest is None:
                mem.seek(page)
                data = mem.read(PAGE)
                used = [i for i in range(0, PAGE, 8) if any(data[i : i + 8])]
                if used:
                    deepest = end - (page + used[0])
    return len(resident) * 4, deepest


def main():
    args, max_kib = sys.argv[1:], None
    if "--max-kib" in args:
        i = args.index("--max-kib")
        max_kib = int(args[i + 1])
        del args[i : i + 2]
    pid, size = int(args[0]), int(args[1]) if len(args) > 1 else 256
    seen = collections.Counter(depth(pid, s, e) for s, e in stacks(pid, size << 10))
    print(f"{size} KiB thread stacks: count x (resident KiB, deepest use in bytes from the top)")
    for (kib, deepest), n in sorted(seen.items()):
        print(f"  {n:6} x ({kib}, {deepest})")
    if max_kib is not None:
        over = sum(n for (kib, _), n in seen.items() if kib > max_kib)
        if not seen or over:
            print(f"{over} of {sum(seen.values())} stacks have more than {max_kib} KiB resident")
            sys.exit(1)


main()
