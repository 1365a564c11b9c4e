"""Streams through a binary channel with the Python SDK, for qmesh's tests.
Usage: III_URL=ws://... python channel_send.py FUNCTION_ID MIB
Creates a channel, calls FUNCTION_ID with {reader: <reader ref>}, writes MIB
MiB of random bytes (1 MiB per write) with a text message {seq, at} after each
write (at = bytes written before it), ends the stream, and prints
{sent_bytes, sent_sha256, messages, received: <the function's result>}."""

import asyncio
import hashlib
import json
import os
import sys

from iii.helpers import create_channel_async

from common import InvocationError, connect, deadline, emit, error_body, fail, stop

deadline(120, "python channel_send")
if len(sys.argv) < 3:
    fail("usage: channel_send.py FUNCTION_ID MIB")
function_id, mib = sys.argv[1], int(sys.argv[2])
iii = connect("py-channel-send")


async def send() -> dict:
    channel = await create_channel_async(iii)
    call = asyncio.ensure_future(
        iii.trigger_async({"function_id": function_id, "payload": {"reader": channel.reader_ref.model_dump(mode="json")}, "timeout_ms": 100000})
    )
    digest, sent = hashlib.sha256(), 0
    for seq in range(mib):
        chunk = os.urandom(1 << 20)
        digest.update(chunk)
        await channel.writer.write(chunk)
        sent += len(chunk)
        await channel.writer.send_message_async(json.dumps({"seq": seq, "at": sent}))
    await channel.writer.close_async()
    return {"sent_bytes": sent, "sent_sha256": digest.hexdigest(), "messages": mib, "received": await call}


# The SDK's client lives on its own event loop thread; stream from there.
try:
    emit(asyncio.run_coroutine_threadsafe(send(), iii._loop).result(timeout=110))
except InvocationError as err:
    emit(error_body(err))
    stop(iii, 3)
stop(iii, 0)
