"""Python side of qmesh's queue-features test (issue 18); the same functions
as tests/node/queue_features.mjs, named `<prefix>::…` (argv[1], default "py"):
report, long, leaf / mid / root, limited."""

import sys
import time

from common import connect, deadline, emit, flush, ready, stop, wait_until_stopped

deadline(120, "python queue-features worker")
prefix = sys.argv[1] if len(sys.argv) > 1 else "py"
iii = connect(f"{prefix}-features")


def call(function_id, payload):
    return iii.trigger({"function_id": function_id, "payload": payload})


def receipt_of(metadata):
    return ((metadata or {}).get("job") or {}).get("receipt")


def report(data, metadata=None):
    receipt = receipt_of(metadata)
    call("queue::progress", {"receipt": receipt, "progress": 50})
    call("queue::log", {"receipt": receipt, "line": f"{prefix} halfway"})
    call("queue::progress", {"receipt": receipt, "progress": {"percent": 100, "stage": "done"}})
    call("queue::log", {"receipt": receipt, "line": f"{prefix} finished"})
    return {"reported": True}


def long(data, metadata=None):
    receipt = receipt_of(metadata)
    started = time.monotonic()
    while (time.monotonic() - started) * 1000 < data["ms"]:
        if data.get("beat_ms"):
            time.sleep(data["beat_ms"] / 1000)
            call("queue::heartbeat", {"receipt": receipt})
        else:
            time.sleep(0.05)
    emit({"event": "long", "receipt": receipt, "attempt": ((metadata or {}).get("job") or {}).get("attempt")})
    return {"ran_ms": int((time.monotonic() - started) * 1000)}


def leaf(data, metadata=None):
    if data.get("fail"):
        raise RuntimeError(f"leaf {data['n']} failed on purpose")
    return data["n"]


def mid(data, metadata=None):
    children = ((metadata or {}).get("job") or {}).get("children") or []
    return sum(c.get("result") or 0 for c in children)


def root(data, metadata=None):
    return ((metadata or {}).get("job") or {}).get("children") or []


def limited(data, metadata=None):
    emit({"event": "ran", "i": data.get("i"), "tenant": data.get("tenant"), "at": int(time.time() * 1000)})
    return True


for name, handler in [
    ("report", report),
    ("long", long),
    ("leaf", leaf),
    ("mid", mid),
    ("root", root),
    ("limited", limited),
]:
    iii.register_function(f"{prefix}::{name}", handler)
flush(iii)
ready()
wait_until_stopped()
stop(iii, 0)
