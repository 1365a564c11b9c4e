"""Shared helpers for the Python test clients (PyPI iii-sdk 0.25.0) that qmesh's
Rust tests spawn: engine URL from III_URL, OTel off, READY / JSON-line output,
a hard deadline, and a clean stop on stdin EOF or SIGTERM."""

import asyncio
import json
import logging
import os
import signal
import sys
import threading
import warnings

os.environ.setdefault("OTEL_ENABLED", "false")
# The 0.25 trigger APIs warn that they are deprecated; so do handler errors we cause on purpose.
warnings.filterwarnings("ignore", category=DeprecationWarning)
_quiet = ("Error in handler", "is deprecated")
_log = logging.StreamHandler(sys.stderr)
_log.addFilter(lambda r: not any(q in r.getMessage() for q in _quiet))
logging.basicConfig(level=logging.WARNING, format="[py %(name)s] %(levelname)s %(message)s", handlers=[_log])

from iii import InitOptions, InvocationError, register_worker  # noqa: E402


def fail(message: str, code: int = 1) -> None:
    print(message, file=sys.stderr, flush=True)
    os._exit(code)


_out = threading.Lock()  # handlers run on other threads: keep each line whole


def _line(text: str) -> None:
    with _out:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


def emit(value) -> None:
    _line(json.dumps(value))


def ready() -> None:
    _line("READY")


def deadline(seconds: float, what: str) -> None:
    """Exits with code 2 after `seconds`, whatever the program is doing."""
    timer = threading.Timer(seconds, fail, (f"{what}: deadline of {seconds:g}s reached", 2))
    timer.daemon = True
    timer.start()


def connect(name: str, otel: dict | None = None):
    """Connects to III_URL; register_worker blocks until the socket is open (max 30 s).
    OTel stays off unless `otel` (the SDK's OtelConfig fields) turns it on."""
    url = os.environ.get("III_URL")
    if not url:
        fail("III_URL is not set (e.g. ws://127.0.0.1:49134)")
    options = InitOptions(
        worker_name=f"{name}-{os.getpid()}",
        otel=otel or {"enabled": False},
        enable_metrics_reporting=False,
    )
    iii = register_worker(url, options)
    if iii.get_connection_state() != "connected":
        fail(f"could not connect to {url}")
    return iii


def flush(iii) -> None:
    """Registrations made after connect are queued on the SDK's event loop; wait
    until the loop has run them (they are then written to the socket)."""
    asyncio.run_coroutine_threadsafe(asyncio.sleep(0.01), iii._loop).result(timeout=5)


def error_body(err: BaseException) -> dict:
    if isinstance(err, InvocationError):
        return {"code": err.code, "message": err.message}
    return {"code": "UNKNOWN", "message": str(err)}


def wait_until_stopped() -> None:
    """Blocks until stdin closes or SIGTERM / SIGINT arrives."""
    stopped = threading.Event()

    def read_stdin() -> None:
        try:
            while sys.stdin.buffer.read1(4096):
                pass
        except Exception:
            pass
        stopped.set()

    threading.Thread(target=read_stdin, daemon=True).start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopped.set())
    while not stopped.wait(0.5):
        pass


def stop(iii, code: int = 0) -> None:
    """Shuts the SDK down (bounded) and exits with `code`."""
    done = threading.Thread(target=iii.shutdown, daemon=True)
    done.start()
    done.join(3)
    with _out:
        sys.stdout.flush()
    os._exit(code)
