"""A plain WebSocket backend for tests/gateway.rs: the kind of app wsgate is put in front of.

Python `websockets` (>= 14, its asyncio API). Started by the test; prints one line per event on
stdout, which the test reads:

    listening PORT                      (or `listening unix:PATH`)
    open path=/room/7?lang=en user=alice auth=password client=127.0.0.1 spoofed=-
    closed code=4001 reason=bye
    received N                          (--slow: messages read so far; never, by design)

Each connection first gets a JSON text message with the request path and the identity headers
it saw. Then it echoes text as text and binary as binary, except these text commands:

    close:CODE   the backend closes with CODE (reason "backend says bye")
    drop         the backend aborts its TCP connection without a close frame
    flood:N      the backend sends N binary messages of 16 KiB as fast as the connection takes them

Options: --port N (0: any free port), --unix PATH, --tls CERT KEY (wss://), --slow (read nothing
after the hello: a stuck app).
"""

import argparse
import asyncio
import json
import ssl
import sys

from websockets.asyncio.server import serve, unix_serve
from websockets.exceptions import ConnectionClosed


def say(line):
    print(line, flush=True)


def handler_for(slow):
    async def handler(ws):
        headers = ws.request.headers
        user = headers.get("X-Wsgate-User", "-")
        users = headers.get_all("X-Wsgate-User")
        say(
            f"open path={ws.request.path} user={user} users={len(users)} "
            f"auth={headers.get('X-Wsgate-Auth', '-')} "
            f"client={headers.get('X-Forwarded-For', '-')}"
        )
        hello = {
            "path": ws.request.path,
            "user": headers.get_all("X-Wsgate-User"),
            "auth": headers.get_all("X-Wsgate-Auth"),
            "client": headers.get_all("X-Forwarded-For"),
            "authorization": headers.get("Authorization"),
            "cookie": headers.get("Cookie"),
        }
        await ws.send(json.dumps(hello))
        try:
            if slow:
                await asyncio.sleep(3600)
            async for msg in ws:
                if isinstance(msg, str) and msg.startswith("close:"):
                    await ws.close(int(msg[6:]), "backend says bye")
                    break
                if msg == "drop":
                    ws.transport.abort()
                    break
                if isinstance(msg, str) and msg.startswith("flood:"):
                    chunk = bytes(16 * 1024)
                    for _ in range(int(msg[6:])):
                        await ws.send(chunk)
                    continue
                await ws.send(msg)
        except ConnectionClosed:
            pass
        finally:
            rcvd = ws.close_code if ws.close_code is not None else "none"
            say(f"closed code={rcvd} reason={ws.close_reason or '-'}")

    return handler


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--unix")
    p.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    p.add_argument("--slow", action="store_true")
    a = p.parse_args()
    handler = handler_for(a.slow)
    # No compression: wsgate never negotiates it, and a plain app needs none.
    opts = dict(compression=None, max_size=1 << 20)
    if a.unix:
        async with unix_serve(handler, a.unix, **opts):
            say(f"listening unix:{a.unix}")
            await asyncio.Future()
    context = None
    if a.tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(a.tls[0], a.tls[1])
    async with serve(handler, "127.0.0.1", a.port, ssl=context, **opts) as server:
        port = server.sockets[0].getsockname()[1]
        say(f"listening {port}")
        await asyncio.Future()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
