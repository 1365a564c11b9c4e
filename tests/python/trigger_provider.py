"""Python provider of the trigger type `py-ticker`, for qmesh's trigger tests.
On each binding it prints {"event":"bound",...}, fires the bound function once
with {tick:1, config} and prints {"event":"fired","result":...}; on unbinding it
prints {"event":"unbound","id":...}. Serves until stdin closes or SIGTERM."""

import asyncio
import os

from iii.triggers import TriggerHandler

from common import connect, deadline, emit, error_body, flush, ready, stop, wait_until_stopped

deadline(float(os.environ.get("QMESH_WORKER_DEADLINE_S", "300")), "python trigger provider")
iii = connect("py-ticker")


async def fire(binding) -> None:
    request = {"function_id": binding.function_id, "payload": {"tick": 1, "config": binding.config}, "timeout_ms": 20000}
    if binding.namespace:
        request["namespace"] = binding.namespace
    try:
        emit({"event": "fired", "result": await iii.trigger_async(request)})
    except Exception as err:
        emit({"event": "fire_failed", "error": error_body(err)})


firing: set = set()  # keeps fire tasks alive until done


class Ticker(TriggerHandler):
    # Both run on the SDK's event loop: never block here.
    async def register_trigger(self, binding) -> None:
        emit({"event": "bound", "id": binding.id, "function_id": binding.function_id, "config": binding.config})
        task = asyncio.get_running_loop().create_task(fire(binding))  # runs after the ack is sent
        firing.add(task)
        task.add_done_callback(firing.discard)

    async def unregister_trigger(self, binding) -> None:
        emit({"event": "unbound", "id": binding.id})


iii.register_trigger_type({"id": "py-ticker", "description": "Fires each bound function once (qmesh test)"}, Ticker())
flush(iii)
ready()
wait_until_stopped()
stop(iii, 0)
