"""Python side of qmesh's HTTP route tests (the README's Python example).
Usage: III_URL=ws://... python http_route.py
Serves POST /py/echo through an `http` trigger (the parsed JSON body back,
201); prints READY once the registrations are sent; runs until stdin closes."""

from common import connect, deadline, flush, ready, stop, wait_until_stopped

deadline(60, "python http route")
iii = connect("py-http")


def echo(req):
    return {
        "status_code": 201,
        "headers": {"x-served-by": "python"},
        "body": {"received": req["body"], "content_type": req["headers"].get("content-type")},
    }


iii.register_function("py::echo", echo)
iii.register_trigger({"type": "http", "function_id": "py::echo", "config": {"api_path": "py/echo", "http_method": "POST"}})
flush(iii)
ready()
wait_until_stopped()
stop(iii, 0)
