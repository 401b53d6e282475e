#!/usr/bin/env python3
"""churn.py: connections that join a WebSocket path and leave again, at a steady rate, for
bench/churn.sh (broadcast latency while members come and go).

    churn.py --url wss://127.0.0.1:PORT/broadcast --rate 50 --hold 1 --duration 12
             [--user bench --pass bench] [--origin https://localhost]

Opens --rate connections a second (TLS, then the HTTP upgrade with the credentials as
?user=..&pass=.., as the shared harness's wsload does by default); each stays --hold seconds,
reading and discarding what it is sent, then sends a close frame and closes. Stops opening after
--duration seconds and waits for the open ones to leave. Prints one JSON line: joins, leaves,
failures (and their kinds), the upgrade time's p50/p99 in µs. Certificates are not checked.
Python's standard library only.
"""

import argparse
import asyncio
import base64
import json
import os
import ssl
import sys
import time
import urllib.parse

HANDSHAKE_TIMEOUT = 10.0


def percentile(sorted_values, p):
    if not sorted_values:
        return None
    rank = max(1, round(p / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


async def one(url, args, ctx, stats):
    target = url.path + "?" + urllib.parse.urlencode({"user": args.user, "pass": args.password})
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET {target} HTTP/1.1\r\nHost: {url.hostname}:{url.port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        + (f"Origin: {args.origin}\r\n" if args.origin else "")
        + "\r\n"
    )
    started = time.perf_counter()
    writer = None
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(url.hostname, url.port, ssl=ctx, server_hostname="localhost"),
            HANDSHAKE_TIMEOUT,
        )
        writer.write(request.encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HANDSHAKE_TIMEOUT)
        status = head.split(b" ", 2)[1].decode()
        if status != "101":
            stats["kinds"][f"status {status}"] = stats["kinds"].get(f"status {status}", 0) + 1
            stats["failures"] += 1
            return
        stats["upgrade_us"].append(int((time.perf_counter() - started) * 1e6))
        stats["joins"] += 1
        leave_at = time.monotonic() + args.hold
        while (left := leave_at - time.monotonic()) > 0:
            try:
                if not await asyncio.wait_for(reader.read(65536), left):
                    raise ConnectionError("closed by the server")
            except asyncio.TimeoutError:
                break
        # A masked close frame, code 1000, then the TCP close.
        mask = os.urandom(4)
        payload = (1000).to_bytes(2, "big")
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        writer.write(bytes([0x88, 0x80 | len(payload)]) + mask + masked)
        await asyncio.wait_for(writer.drain(), HANDSHAKE_TIMEOUT)
        stats["leaves"] += 1
    except Exception as e:  # noqa: BLE001 - every failure is counted by kind
        kind = type(e).__name__
        stats["kinds"][kind] = stats["kinds"].get(kind, 0) + 1
        stats["failures"] += 1
    finally:
        if writer is not None:
            writer.close()


async def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True)
    p.add_argument("--rate", type=float, default=50)
    p.add_argument("--hold", type=float, default=1.0)
    p.add_argument("--duration", type=float, default=12)
    p.add_argument("--user", default="bench")
    p.add_argument("--pass", dest="password", default="bench")
    p.add_argument("--origin", default="https://localhost")
    args = p.parse_args()
    url = urllib.parse.urlparse(args.url)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    stats = {"joins": 0, "leaves": 0, "failures": 0, "kinds": {}, "upgrade_us": []}
    tasks = []
    start = time.monotonic()
    n = 0
    while time.monotonic() - start < args.duration:
        due = start + n / args.rate
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        tasks.append(asyncio.create_task(one(url, args, ctx, stats)))
        n += 1
    await asyncio.gather(*tasks)
    up = sorted(stats.pop("upgrade_us"))
    stats.update(
        opened=n,
        rate=args.rate,
        hold=args.hold,
        duration=args.duration,
        upgrade_us={"p50": percentile(up, 50), "p99": percentile(up, 99)},
    )
    print(json.dumps(stats), flush=True)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
