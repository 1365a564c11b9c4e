"""Python worker with OpenTelemetry on, for tests/telemetry.rs: serves
py::traced. The SDK wraps each call in an `execute py::traced` span under the
invocation's traceparent and sends it on /otel. Prints READY, then serves
until stdin closes or SIGTERM."""

import os

from common import connect, deadline, flush, ready, stop, wait_until_stopped

deadline(float(os.environ.get("QMESH_WORKER_DEADLINE_S", "120")), "python otel worker")
iii = connect(
    "py-otel-worker",
    otel={"enabled": True, "service_name": "py-otel-worker", "spans_flush_interval_ms": 50},
)


def traced(data):
    return {"traced": "python", "n": (data or {}).get("n")}


iii.register_function("py::traced", traced)
flush(iii)
ready()
wait_until_stopped()
stop(iii, 0)
