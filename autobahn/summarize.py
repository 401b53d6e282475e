#!/usr/bin/env python3
"""Summarises kosoku's index.json: one line per case (`ID BEHAVIOR close=BEHAVIORCLOSE code=N`),
in case order, the agent name (it varies with the port) left out so the file is stable; or, with
--table, the counts per section and result as a Markdown table."""

import json
import sys
from collections import Counter, defaultdict

RESULTS = ["OK", "NON-STRICT", "INFORMATIONAL", "FAILED", "UNIMPLEMENTED", "ERROR"]


def case_key(case_id):
    return [int(part) for part in case_id.split(".")]


def load(path):
    with open(path, encoding="utf-8") as f:
        index = json.load(f)
    cases = {}
    for agent_cases in index.values():  # one agent: the server's address
        cases.update(agent_cases)
    return sorted(cases.items(), key=lambda kv: case_key(kv[0]))


def main():
    args = sys.argv[1:]
    table = args[:1] == ["--table"]
    cases = load(args[-1])
    if not table:
        for case_id, r in cases:
            close = r["behaviorClose"].replace(" ", "_")
            code = r.get("remoteCloseCode")
            print(f"{case_id} {r['behavior']} close={close} code={code if code is not None else '-'}")
        return
    counts = defaultdict(Counter)
    for case_id, r in cases:
        counts[int(case_id.split(".")[0])][r["behavior"]] += 1
    used = [r for r in RESULTS if any(c[r] for c in counts.values())]
    print("| section | cases | " + " | ".join(used) + " |")
    print("|---|---|" + "---|" * len(used))
    for section in sorted(counts):
        c = counts[section]
        print(f"| {section} | {sum(c.values())} | " + " | ".join(str(c[r]) for r in used) + " |")
    total = Counter()
    for c in counts.values():
        total.update(c)
    print(f"| all | {sum(total.values())} | " + " | ".join(str(total[r]) for r in used) + " |")


if __name__ == "__main__":
    main()
