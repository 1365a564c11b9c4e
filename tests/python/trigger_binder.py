"""Python side that binds to a trigger type, for qmesh's trigger tests.
Usage: III_URL=ws://... python trigger_binder.py TRIGGER_TYPE
Registers py::on_tick, binds it with config {"every":"1s"}, prints
{"event":"tick","data":...} on the first tick, unbinds, waits 1 s, exits 0."""

import sys
import threading
import time

from common import connect, deadline, emit, fail, flush, ready, stop

deadline(30, "python trigger binder")
if len(sys.argv) < 2:
    fail("usage: trigger_binder.py TRIGGER_TYPE")
trigger_type = sys.argv[1]

iii = connect("py-binder")
ticked = threading.Event()


def on_tick(data):
    emit({"event": "tick", "data": data})
    ticked.set()
    return {"ok": True}


iii.register_function("py::on_tick", on_tick)
binding = iii.register_trigger({"type": trigger_type, "function_id": "py::on_tick", "config": {"every": "1s"}})
flush(iii)
ready()
ticked.wait()
time.sleep(0.2)  # unbind only after the tick's result has gone out
binding.unregister()
time.sleep(1)
stop(iii, 0)
