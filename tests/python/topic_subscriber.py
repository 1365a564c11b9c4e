"""Python side of qmesh's durable topic tests: one durable:subscriber.
Usage: III_URL=ws://... python topic_subscriber.py TOPIC FUNCTION_ID
Registers FUNCTION_ID, binds it to TOPIC, prints {"event": "message", "data": ...}
for every job it runs and runs until stdin closes."""

import sys

from common import connect, deadline, emit, fail, flush, ready, stop, wait_until_stopped

deadline(170, "python topic subscriber")
if len(sys.argv) != 3:
    fail("usage: topic_subscriber.py TOPIC FUNCTION_ID")
topic, function_id = sys.argv[1], sys.argv[2]
iii = connect("py-topic")


def on_message(data):
    emit({"event": "message", "data": data})
    return {"ok": True}


iii.register_function(function_id, on_message)
iii.register_trigger({"type": "durable:subscriber", "function_id": function_id, "config": {"topic": topic}})
flush(iii)
ready()
wait_until_stopped()
stop(iii, 0)
