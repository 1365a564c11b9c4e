"""Long-running Python worker for qmesh's SDK tests: registers py::add,
py::echo and py::fail. Prints READY, then serves until stdin closes or SIGTERM."""

import os

from common import connect, deadline, flush, ready, stop, wait_until_stopped

deadline(float(os.environ.get("QMESH_WORKER_DEADLINE_S", "300")), "python worker")
iii = connect("py-worker")


def add(data):
    return {"sum": data["a"] + data["b"]}


def echo(data):
    return data


def boom(data):
    raise Exception("boom")


iii.register_function("py::add", add)
iii.register_function("py::echo", echo)
iii.register_function("py::fail", boom)
flush(iii)
ready()
wait_until_stopped()
stop(iii, 0)
