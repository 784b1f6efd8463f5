"""Structured logs: one JSON object a line, context passed as `extra={...}`.

Nothing here ever sees a secret: callers log ids, names and statuses, never headers or keys.
Lines are formatted and written by a log thread (`QueueListener`), off the request path; what
is queued is written at exit (a process killed with SIGKILL loses its last lines, never data).
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import queue
import sys
import time
from typing import Any

import orjson

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Render a record as one JSON line with its `extra` fields at the top level."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and key != "color_message":
                entry[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            entry["exc_type"] = record.exc_info[0].__name__
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text and "_exc_type" in vars(record):  # prepared by `_Handoff`
            entry["exc_type"] = vars(record)["_exc_type"]
            entry["exc"] = record.exc_text
        return orjson.dumps(entry, default=str).decode()


class _Handoff(logging.handlers.QueueHandler):
    """Hands each record to the log thread, which formats and writes it: a request never waits
    for a log line's JSON or for stdout. The message and an exception's traceback are made
    text here, while their objects are as they were when logged."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = _TRACEBACKS.formatException(record.exc_info)
            record.__dict__["_exc_type"] = record.exc_info[0].__name__
        record.msg, record.args, record.exc_info = record.getMessage(), None, None
        return record


_TRACEBACKS = logging.Formatter()
_listener: logging.handlers.QueueListener | None = None


def write_directly() -> None:
    """From now on write each line as it is logged, after what is queued: for the end of the
    process (uvicorn may end it by re-raising SIGTERM, which skips `atexit`)."""
    global _listener
    if _listener is None:
        return
    handlers = list(_listener.handlers)
    _stop_listener()  # what is queued is written first
    logging.getLogger().handlers[:] = handlers


def _stop_listener() -> None:
    """Write what is still queued, then stop the log thread (at exit, or before a new one)."""
    global _listener
    if _listener is not None:
        _listener.stop()
        _listener = None


def configure_logging(level: str) -> None:
    """Send our logs and uvicorn's to stdout as JSON; uvicorn's access log is replaced."""
    global _listener
    _stop_listener()
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    lines: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    _listener = logging.handlers.QueueListener(lines, handler)
    _listener.start()
    handoff = _Handoff(lines)
    handoff.setFormatter(handler.formatter)  # what the lines become, in the log thread
    root = logging.getLogger()
    root.handlers[:] = [handoff]
    root.setLevel(level if level in ("DEBUG", "INFO", "WARNING", "ERROR") else "INFO")
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # httpx logs every request's full URL at INFO: keep it to warnings, so that no URL
    # (the Stripe API's, the upstream's) ever reaches the log from there.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Our middleware writes a structured access log; uvicorn's plain one would duplicate it.
    access = logging.getLogger("uvicorn.access")
    access.handlers[:] = []
    access.propagate = False
    access.disabled = True


atexit.register(_stop_listener)
