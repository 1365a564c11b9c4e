"""Python side of qmesh's job-context test: py::job reports the metadata its
handler receives ({"event":"job","metadata":...}), beats once with the
receipt from it (queue::heartbeat), then completes."""

from common import connect, deadline, emit, flush, ready, stop, wait_until_stopped

deadline(60, "python job-context worker")
iii = connect("py-job")


def job(data, metadata=None):
    receipt = (metadata or {}).get("job", {}).get("receipt")
    beat = iii.trigger({"function_id": "queue::heartbeat", "payload": {"receipt": receipt, "extend": "5s"}})
    emit({"event": "job", "metadata": metadata, "beat": beat})
    return {"ok": True}


iii.register_function("py::job", job)
flush(iii)
ready()
wait_until_stopped()
stop(iii, 0)
