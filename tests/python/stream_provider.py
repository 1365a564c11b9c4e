"""A custom stream provider through the Python SDK's create_stream helper,
driven as iii's own Python test drives it, for qmesh's tests.
Usage: III_URL=ws://... python stream_provider.py STREAM_NAME
Registers the provider, waits until the engine lists its functions, then
calls stream::set / get / delete / get and checks each against the
provider's own dict. Prints one JSON line per step ({"step": ..., ...}) and
exits 0."""

import sys
import time
import warnings

from common import connect, deadline, emit, fail, stop

warnings.filterwarnings("ignore", category=FutureWarning)  # create_stream is deprecated in 0.25

from iii import IStream  # noqa: E402
from iii.helpers import create_stream  # noqa: E402
from iii_helpers.stream import StreamDeleteResult, StreamSetResult  # noqa: E402

deadline(60, "python stream provider")
if len(sys.argv) != 2:
    fail("usage: stream_provider.py STREAM_NAME")
name = sys.argv[1]
iii = connect("py-stream-provider")
store: dict = {}
calls: list = []


class DictStream(IStream):
    async def get(self, input):
        calls.append("get")
        return store.get((input.group_id, input.item_id))

    async def set(self, input):
        calls.append("set")
        old = store.get((input.group_id, input.item_id))
        store[(input.group_id, input.item_id)] = input.data
        return StreamSetResult(old_value=old, new_value=input.data)

    async def delete(self, input):
        calls.append("delete")
        return StreamDeleteResult(old_value=store.pop((input.group_id, input.item_id), None))

    async def list(self, input):
        calls.append("list")
        return [v for (g, _), v in store.items() if g == input.group_id]

    async def list_groups(self, input):
        calls.append("list_groups")
        return sorted({g for (g, _) in store})

    async def update(self, input):  # create_stream does not register update
        raise NotImplementedError


create_stream(iii, name, DictStream())


def call(function_id, payload):
    return iii.trigger({"function_id": function_id, "payload": payload, "timeout_ms": 10000})


wanted = {f"stream::{op}({name})" for op in ("get", "set", "delete", "list", "list_groups")}
for _ in range(500):
    listed = call("engine::functions::list", {})
    ids = {f.get("function_id") for f in (listed.get("functions", []) if isinstance(listed, dict) else listed)}
    if wanted <= ids:
        break
    time.sleep(0.01)
else:
    fail(f"the provider functions never appeared: {sorted(wanted)}")
emit({"step": "registered"})

item = {"stream_name": name, "group_id": "g", "item_id": "i"}
data = {"name": "from python", "n": 1}
result = call("stream::set", {**item, "data": data})
# Delegation is synchronous: the provider holds the item when set answers.
emit({"step": "set", "result": result, "in_provider": store.get(("g", "i"))})
emit({"step": "get", "result": call("stream::get", item)})
emit({"step": "list", "result": call("stream::list", {"stream_name": name, "group_id": "g"})})
emit({"step": "delete", "result": call("stream::delete", item), "in_provider": store.get(("g", "i"))})
emit({"step": "get_after_delete", "result": call("stream::get", item), "calls": calls})
stop(iii, 0)
