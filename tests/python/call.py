"""One synchronous call through the engine with the Python SDK, for qmesh's tests.
Usage: III_URL=ws://... python call.py FUNCTION_ID 'JSON'
Prints the result as one JSON line (exit 0), or the error {code,message} (exit 3)."""

import json
import sys

from common import InvocationError, connect, deadline, emit, error_body, fail, stop

deadline(30, "python call")
if len(sys.argv) < 2:
    fail("usage: call.py FUNCTION_ID [JSON]")
function_id = sys.argv[1]
try:
    payload = json.loads(sys.argv[2]) if len(sys.argv) > 2 else None
except ValueError as e:
    fail(f"payload is not JSON: {e}")

iii = connect("py-call")
try:
    result = iii.trigger({"function_id": function_id, "payload": payload, "timeout_ms": 25000})
except InvocationError as err:
    emit(error_body(err))
    stop(iii, 3)
emit(result)
stop(iii, 0)
