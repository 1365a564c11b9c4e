"""Long-running Python worker for qmesh's channel tests: py::channel_sink reads
the channel ref it is given ({reader}) to the end and answers
{sha256, bytes, seqs, misplaced}: seqs are the text messages' seq in arrival
order, misplaced counts messages whose `at` differs from the bytes received
before them. Prints READY, then serves until stdin closes or SIGTERM."""

import hashlib
import json
import os

from common import connect, deadline, flush, ready, stop, wait_until_stopped

deadline(float(os.environ.get("QMESH_WORKER_DEADLINE_S", "300")), "python channel_sink")
iii = connect("py-channel-sink")


async def channel_sink(data):
    reader = data["reader"]  # the SDK turned the ref into a ChannelReader
    digest = hashlib.sha256()
    state = {"got": 0, "misplaced": 0, "seqs": []}

    def on_message(text):
        msg = json.loads(text)
        state["seqs"].append(msg["seq"])
        if msg["at"] != state["got"]:
            state["misplaced"] += 1

    reader.on_message(on_message)
    async for chunk in reader:
        digest.update(chunk)
        state["got"] += len(chunk)
    return {"sha256": digest.hexdigest(), "bytes": state["got"], "seqs": state["seqs"], "misplaced": state["misplaced"]}


iii.register_function("py::channel_sink", channel_sink)
flush(iii)
ready()
wait_until_stopped()
stop(iii, 0)
