"""Python side of qmesh's cron tests: a function bound to a `cron` trigger.
Usage: III_URL=ws://... python cron_worker.py TRIGGER_ID EXPRESSION
Registers py::cron_tick, binds it with {expression}, prints
{"event":"tick","data":...} for every fire and runs until stdin closes."""

import sys

from common import connect, deadline, emit, fail, flush, ready, stop, wait_until_stopped

deadline(120, "python cron worker")
if len(sys.argv) != 3:
    fail("usage: cron_worker.py TRIGGER_ID EXPRESSION")
trigger_id, expression = sys.argv[1], sys.argv[2]

iii = connect("py-cron")


def tick(data):
    emit({"event": "tick", "data": data})
    return {"ok": True}


iii.register_function("py::cron_tick", tick)
iii.register_trigger(
    {"id": trigger_id, "type": "cron", "function_id": "py::cron_tick", "config": {"expression": expression}}
)
flush(iii)
ready()
wait_until_stopped()
stop(iii, 0)
