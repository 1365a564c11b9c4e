"""One call with OpenTelemetry on, made inside a `py caller` span, for
tests/telemetry.rs. Usage: III_URL=ws://... python otel_call.py FUNCTION_ID 'JSON'
Prints {trace_id, span_id, result}: the caller span's ids and the result.

The call runs on the SDK's loop (trigger_async) so the span is the current
context where the SDK reads the traceparent it sends."""

import asyncio
import json
import sys

from common import connect, deadline, emit, fail, stop

deadline(30, "python otel call")
if len(sys.argv) < 2:
    fail("usage: otel_call.py FUNCTION_ID [JSON]")
function_id = sys.argv[1]
payload = json.loads(sys.argv[2]) if len(sys.argv) > 2 else None

iii = connect(
    "py-otel-call",
    otel={"enabled": True, "service_name": "py-otel-call", "spans_flush_interval_ms": 50},
)


async def traced_call():
    from iii_helpers.observability import flush_otel
    from opentelemetry import trace

    tracer = trace.get_tracer("qmesh-test")
    with tracer.start_as_current_span("py caller") as span:
        result = await iii.trigger_async(
            {"function_id": function_id, "payload": payload, "timeout_ms": 25000}
        )
        ctx = span.get_span_context()
        out = {
            "trace_id": format(ctx.trace_id, "032x"),
            "span_id": format(ctx.span_id, "016x"),
            "result": result,
        }
    await flush_otel()
    return out


emit(asyncio.run_coroutine_threadsafe(traced_call(), iii._loop).result(timeout=25))
stop(iii, 0)
