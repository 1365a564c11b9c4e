"""An attacker for qmesh's defence tests, not an SDK client: opens COUNT
TCP connections to the engine at III_URL, spread over source addresses
127.0.0.<FIRST>.., sends half an HTTP upgrade request on each and never
finishes it. Prints {"opened": n, "closed_by_engine": m} once every
connection was attempted, then READY, and holds what is still open until
stdin closes."""

import asyncio
import json
import os
import sys
from urllib.parse import urlparse

HALF = b"GET / HTTP/1.1\r\nHost: qmesh\r\nUpgrade: websocket\r\n"


async def one(host, port, source, held):
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, local_addr=(source, 0)), 30
        )
    except (OSError, asyncio.TimeoutError):
        return False
    try:
        writer.write(HALF)
        await writer.drain()
    except OSError:
        pass
    held.append((reader, writer))
    return True


async def main():
    count = int(sys.argv[1])
    first = int(sys.argv[2])
    sources = int(sys.argv[3])
    url = urlparse(os.environ["III_URL"])
    held = []
    results = []
    batch = 2000
    for start in range(0, count, batch):
        tasks = [
            one(url.hostname, url.port, f"127.0.0.{first + (i % sources)}", held)
            for i in range(start, min(count, start + batch))
        ]
        results += await asyncio.gather(*tasks)
    # A connection the engine closed reads EOF at once.
    closed = 0
    for reader, _ in held:
        try:
            data = await asyncio.wait_for(reader.read(1), 0.001)
            closed += data == b""
        except (asyncio.TimeoutError, OSError):
            pass
    print(json.dumps({"opened": sum(results), "closed_by_engine": closed}), flush=True)
    print("READY", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


asyncio.run(main())
