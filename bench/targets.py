#!/usr/bin/env python3
"""targets.py — issue 7's targets from one run of bench/run-peers.sh.

    bench/targets.py WSGATE.jsonl NODE.jsonl TOKIO.jsonl [EXTRA.jsonl ...]

The first three files are run.sh's result lines for wsgate, node-ws and tokio-ws (same run).
EXTRA files hold more result lines tagged with "server" (wsgate / node-ws / tokio-ws) and
"scenario": the long handshake run (`connect-20000-c16`, long enough for the server CPU to be
sampled), and wsgate's own `startup` and `scale-10000` lines.

Prints the server CPU per operation (CPU-µs = server CPU % of one core x 10^4 / operations per
second) for echo, broadcast and handshakes, then every target with the measured figures, the
ratios against the peers and whether it is met. Figures are medians over the repetitions.
"""
import json
import statistics
import sys

PEERS = ("wsgate", "node-ws", "tokio-ws")


def load(paths):
    rows = []
    for i, path in enumerate(paths):
        for line in open(path):
            line = line.strip()
            if not line:
                continue
            r = json.loads(line)
            if i < 3:
                r.setdefault("server", PEERS[i])
            rows.append(r)
    return rows


def pick(rows, server, scenario):
    return [r for r in rows if r.get("server") == server and r.get("scenario") == scenario
            and "error" not in r]


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


RATE = {"echo": "msgs_per_s", "broadcast": "deliveries_per_s", "connect": "handshakes_per_s"}
LATENCY = {"echo": "rtt_us", "broadcast": "latency_us", "connect": "handshake_us"}


def cpu_us(r):
    """Server CPU-µs per operation of one result line, or None."""
    rate = r.get(RATE.get(r.get("mode"), ""), 0)
    cpu = r.get("server_cpu_pct")
    if not rate or cpu is None:
        return None
    return cpu * 1e4 / rate


def metric(rows, server, scenario, fn):
    return median([fn(r) for r in pick(rows, server, scenario)])


def p99(r):
    lat = r.get(LATENCY.get(r.get("mode"), "")) or {}
    return lat.get("p99")


def fmt(v, digits=1, unit=""):
    if v is None:
        return "–"
    return f"{v:,.{digits}f}{unit}"


def ratio(a, b):
    if a is None or not b:
        return None
    return a / b


def main(argv):
    if len(argv) < 4:
        print(__doc__, file=sys.stderr)
        return 2
    rows = load(argv[1:])

    print("Server CPU per operation (CPU-µs; median over reps)\n")
    print("| scenario | wsgate | node-ws | tokio-ws | wsgate / node | wsgate / tokio |")
    print("|---|--:|--:|--:|--:|--:|")
    for scenario, what in [("echo-1c-32B", "message"), ("echo-1c-4KiB", "message"),
                           ("echo-50c-32B", "message"), ("echo-50c-4KiB", "message"),
                           ("bcast-100s-100r", "delivery"), ("bcast-1000s-100r", "delivery"),
                           ("connect-20000-c16", "handshake")]:
        w, n, t = (metric(rows, s, scenario, cpu_us) for s in PEERS)
        print(f"| {scenario} (per {what}) | {fmt(w, 2)} | {fmt(n, 2)} | {fmt(t, 2)} | "
              f"{fmt(ratio(w, n), 2)} | {fmt(ratio(w, t), 2)} |")

    def get(server, scenario, fn):
        return metric(rows, server, scenario, fn)

    targets = []

    def target(name, value, ok, detail):
        targets.append((name, value, "met" if ok else ("not measured" if ok is None else "missed"),
                        detail))

    def both(a, b):
        return None if a is None or b is None else (a and b)

    def le(a, b):
        return None if a is None or b is None else a <= b

    # echo 50 x 32 B
    w, n, t = (get(s, "echo-50c-32B", cpu_us) for s in PEERS)
    target("echo 50×32 B: CPU per message ≤ ⅓ node and ≤ ½ tokio",
           f"{fmt(w, 2)} µs (node {fmt(n, 2)}, tokio {fmt(t, 2)})",
           both(le(w, n / 3 if n else None), le(w, t / 2 if t else None)),
           f"ratios {fmt(ratio(w, n), 2)} / {fmt(ratio(w, t), 2)}")
    w, n, t = (get(s, "echo-50c-32B", p99) for s in PEERS)
    target("echo 50×32 B: p99 RTT ≤ both peers'", f"{fmt(w, 0)} µs (node {fmt(n, 0)}, tokio {fmt(t, 0)})",
           both(le(w, n), le(w, t)), f"ratios {fmt(ratio(w, n), 2)} / {fmt(ratio(w, t), 2)}")
    # broadcast to 1000
    lost = [r.get("lost", 0) + r.get("errors", 0) for r in pick(rows, "wsgate", "bcast-1000s-100r")]
    target("broadcast 1000: nothing lost", f"lost+errors {sum(lost)} over {len(lost)} reps",
           (sum(lost) == 0) if lost else None, "")
    w, n, t = (get(s, "bcast-1000s-100r", p99) for s in PEERS)
    target("broadcast 1000: p99 fan-out ≤ ½ node", f"{fmt(w / 1000 if w else None, 1)} ms "
           f"(node {fmt(n / 1000 if n else None, 1)}, tokio {fmt(t / 1000 if t else None, 1)})",
           le(w, n / 2 if n else None), f"ratio {fmt(ratio(w, n), 2)}")
    w, n, t = (get(s, "bcast-1000s-100r", cpu_us) for s in PEERS)
    target("broadcast 1000: CPU per delivery ≤ ½ node", f"{fmt(w, 2)} µs (node {fmt(n, 2)}, tokio {fmt(t, 2)})",
           le(w, n / 2 if n else None), f"ratio {fmt(ratio(w, n), 2)}")
    # handshakes
    w, n, t = (get(s, "connect-20000-c16", cpu_us) for s in PEERS)
    target("handshakes: CPU per handshake ≤ ½ node and ≤ tokio",
           f"{fmt(w, 0)} µs (node {fmt(n, 0)}, tokio {fmt(t, 0)})",
           both(le(w, n / 2 if n else None), le(w, t)),
           f"ratios {fmt(ratio(w, n), 2)} / {fmt(ratio(w, t), 2)}")
    rates = [get("wsgate", s, lambda r: r.get("handshakes_per_s"))
             for s in ("connect-2000-c16", "connect-20000-c16")]
    best = max((r for r in rates if r), default=None)
    target("handshakes: ≥ 4,000/s", f"{fmt(best, 0)}/s", None if best is None else best >= 4000,
           "best of connect-2000-c16 / connect-20000-c16")
    # idle
    w, n, t = (get(s, "idle-1000", lambda r: r.get("per_conn_kib") if r.get("rep") == 1 else None)
               for s in PEERS)
    target("idle: ≤ 16 KiB RSS per idle TLS connection", f"{fmt(w, 1)} KiB (node {fmt(n, 1)}, tokio {fmt(t, 1)})",
           le(w, 16), "first repetition (fresh process)")
    cpus = [r.get("server_cpu_pct") for r in pick(rows, "wsgate", "idle-1000")]
    target("idle: zero server CPU with 1000 idle", f"{', '.join(fmt(c, 1, ' %') for c in cpus)}",
           None if not cpus or None in cpus else max(cpus) == 0, "server CPU % per rep")
    # scale and start-up (wsgate's own lines)
    scale = pick(rows, "wsgate", "scale-10000")
    if scale:
        s = scale[-1]
        target("scale: 10,000 idle TLS connections in one process",
               f"{s.get('held')}/{s.get('conns')} held, RSS {fmt(s.get('rss_kib', 0) / 1024, 1)} MiB "
               f"({fmt(s.get('per_conn_kib'), 1)} KiB/conn)",
               s.get("held") == s.get("conns") == 10000, f"idle CPU {fmt(s.get('server_cpu_pct'), 1, ' %')}")
    else:
        target("scale: 10,000 idle TLS connections in one process", "–", None, "")
    start = pick(rows, "wsgate", "startup")
    if start:
        s = start[-1]
        target("start-up: idle RSS ≤ 3 MiB", f"{fmt(s.get('rss_kib', 0) / 1024, 2)} MiB",
               s.get("rss_kib", 1e9) <= 3 * 1024,
               f"{s.get('workers')} workers; private (RssAnon) {fmt(s.get('rss_anon_kib', 0) / 1024, 2)} MiB, "
               f"file-backed code (RssFile) {fmt(s.get('rss_file_kib', 0) / 1024, 2)} MiB")
        target("start-up: stripped binary ≤ 3 MiB", f"{fmt(s.get('binary_bytes', 0) / 2**20, 2)} MiB",
               s.get("binary_bytes", 1e12) <= 3 * 2**20, "target/release/wsgate")
    before_after(rows)
    print("\nTargets (server pinned to one core, TLS 1.3, same run)\n")
    print("| target | measured | result | note |")
    print("|---|---|---|---|")
    for name, value, result, detail in targets:
        print(f"| {name} | {value} | {result} | {detail} |")
    return 0


def before_after(rows):
    """With a `wsgate-before` server in the run (run-peers.sh --baseline REV): the same figures
    for the baseline and today's tree, and their ratio (after / before; below 1 is better)."""
    if not any(r.get("server") == "wsgate-before" for r in rows):
        return
    print("\nBefore and after (wsgate-before = the --baseline revision, same run)\n")
    print("| figure | before | after | after / before | tokio-ws | after / tokio |")
    print("|---|--:|--:|--:|--:|--:|")
    idle = lambda r: r.get("per_conn_kib") if r.get("rep") == 1 else None
    for scenario, what, fn in [("connect-20000-c16", "CPU-µs per handshake", cpu_us),
                               ("connect-2000-c16", "CPU-µs per handshake", cpu_us),
                               ("idle-1000", "KiB per idle connection", idle),
                               ("echo-1c-32B", "CPU-µs per message", cpu_us),
                               ("echo-1c-4KiB", "CPU-µs per message", cpu_us),
                               ("echo-50c-32B", "CPU-µs per message", cpu_us),
                               ("echo-50c-4KiB", "CPU-µs per message", cpu_us),
                               ("bcast-100s-100r", "CPU-µs per delivery", cpu_us),
                               ("bcast-1000s-100r", "CPU-µs per delivery", cpu_us)]:
        b, a, t = (metric(rows, s, scenario, fn) for s in ("wsgate-before", "wsgate", "tokio-ws"))
        if a is None and b is None:
            continue
        print(f"| {scenario}: {what} | {fmt(b, 2)} | {fmt(a, 2)} | {fmt(ratio(a, b), 3)} | "
              f"{fmt(t, 2)} | {fmt(ratio(a, t), 3)} |")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
