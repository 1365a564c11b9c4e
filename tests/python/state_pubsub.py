"""State and pubsub through the Python SDK, for qmesh's tests.
Usage: III_URL=ws://... python state_pubsub.py
Prints one JSON line per step ({"step": ..., ...}) and exits 0."""

import threading
import time

from common import connect, deadline, emit, flush, stop

deadline(30, "python state and pubsub")
iii = connect("py-state")


def call(function_id, payload):
    return iii.trigger({"function_id": function_id, "payload": payload, "timeout_ms": 10000})


call("state::delete", {"scope": "py-scope", "key": "k"})
emit({"step": "set", "result": call("state::set", {"scope": "py-scope", "key": "k", "value": {"list": [], "text": "hello"}})})
ops = [
    {"type": "append", "path": "list", "value": {"kind": "chunk"}},
    {"type": "append", "path": "text", "value": " world"},
]
emit({"step": "update", "result": call("state::update", {"scope": "py-scope", "key": "k", "ops": ops})})
emit({"step": "get", "result": call("state::get", {"scope": "py-scope", "key": "k"})})
emit({"step": "list", "result": call("state::list", {"scope": "py-scope"})})

messages = []
arrived = threading.Condition()


def on_message(data):
    with arrived:
        messages.append(data)
        arrived.notify_all()
    return {}


iii.register_function("py::on_message", on_message)
iii.register_trigger({"type": "subscribe", "function_id": "py::on_message", "config": {"topic": "py-topic"}})
flush(iii)
# Publish until the subscription is live (registrations are not acknowledged).
n = 0
with arrived:
    while not messages:
        call("publish", {"topic": "py-topic", "data": {"warmup": n}})
        n += 1
        arrived.wait(0.1)
call("publish", {"topic": "py-topic", "data": {"message": "Hello PubSub!"}})
with arrived:
    arrived.wait_for(lambda: any("message" in m for m in messages), 5)
time.sleep(0.3)  # a second delivery would arrive in this window
with arrived:
    finals = [m for m in messages if "message" in m]
emit({"step": "pubsub", "finals": finals})
stop(iii, 0)
