"""Structured logs: one JSON object a line, context passed as `extra={...}`.

Nothing here ever sees a secret: callers log ids, names and statuses, never headers or keys.
Lines are formatted and written by a log thread (`_LogThread`), off the request path; what
is queued is written at exit (a process killed with SIGKILL loses its last lines, never data).
"""

from __future__ import annotations

import atexit
import copy
import logging
import logging.handlers
import queue
import sys
import threading
import time
from typing import Any

import orjson

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def _ts(created: float) -> str:
    millis = int((created - int(created)) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{millis:03d}Z"


class JsonFormatter(logging.Formatter):
    """Render a record as one JSON line with its `extra` fields at the top level."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _ts(record.created),
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
    text here, while their objects are as they were when logged (other values of `extra` are
    read when the line is written: log values, not objects that change)."""

    def __init__(self, lines: queue.SimpleQueue[_Line]) -> None:
        super().__init__(lines)
        self.lines = lines

    def enqueue(self, record: logging.LogRecord) -> None:
        _put(self.lines, record)

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record = copy.copy(record)  # the caller's record stays whole for other handlers
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = _TRACEBACKS.formatException(record.exc_info)
            record.__dict__["_exc_type"] = record.exc_info[0].__name__
        record.msg, record.args, record.exc_info = record.getMessage(), None, None
        return record


class _LogThread:
    """Formats the queued records and writes them, every line that is waiting in one write:
    under load a few hundred lines cost one system call, not one each. A line waits at most
    `_PAUSE` seconds before it is written."""

    def __init__(
        self,
        lines: queue.SimpleQueue[_Line],
        handler: logging.StreamHandler[Any],
    ) -> None:
        self.lines = lines
        self.handlers = [handler]
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Write what is queued, then end the thread."""
        self.lines.put(None)
        self._thread.join()

    def _run(self) -> None:
        while True:
            # Woken on a timer, not by each line: a thread woken per request would cost each
            # request a switch between threads.
            batch: list[_Line] = []
            while len(batch) < _MAX_BATCH:
                try:
                    batch.append(self.lines.get_nowait())
                except queue.Empty:
                    break
            if not batch:
                time.sleep(_PAUSE)
                continue
            self._write(batch)
            if None in batch:
                return

    def _write(self, batch: list[_Line]) -> None:
        """Every line of the batch that can be made, in one write; a line that cannot is
        reported on stderr (`handleError`) and the thread goes on, whatever happened."""
        handler = self.handlers[0]
        out = []
        for record in batch:
            try:
                if isinstance(record, tuple):  # an access line: (unix time, logger, fields)
                    created, name, fields = record
                    entry = {"ts": _ts(created), "level": "info", "logger": name, "msg": "request"}
                    out.append(orjson.dumps(entry | fields, default=str).decode())
                elif record is not None:
                    out.append(handler.format(record))
            except Exception:
                handler.handleError(logging.makeLogRecord({"msg": "a log line failed"}))
        if out:
            try:
                handler.stream.write("\n".join(out) + "\n")
                handler.flush()
            except Exception:
                handler.handleError(logging.makeLogRecord({"msg": "writing the log failed"}))


_MAX_BATCH = 512
_MAX_QUEUED = 50_000


def _put(lines: queue.SimpleQueue[_Line], line: _Line) -> None:
    """Queue a line; while `_MAX_QUEUED` wait (stdout stalls: a full pipe, a slow collector),
    the caller waits for the log thread, as it did when it wrote its own lines, instead of
    lines piling up in memory."""
    while lines.qsize() >= _MAX_QUEUED and _listener is not None:
        time.sleep(0.001)
    lines.put(line)


_PAUSE = 0.02  # seconds between looks at the queue while it is empty
_Line = logging.LogRecord | tuple[float, str, dict[str, Any]] | None


def access(logger: logging.Logger, fields: dict[str, Any]) -> None:
    """One access line, `{"msg": "request", **fields}` at INFO from `logger`, as `logger.info`
    would write it but without making a `LogRecord`: a fifth of a request's cost otherwise."""
    listener = _listener
    handlers = logging.getLogger().handlers
    if (
        listener is None
        or logger.handlers
        or not logger.propagate
        or len(handlers) != 1
        or not isinstance(handlers[0], _Handoff)
    ):
        logger.info("request", extra=fields)  # logging as someone else set it up
    elif logger.isEnabledFor(logging.INFO):
        _put(listener.lines, (time.time(), logger.name, fields))


_TRACEBACKS = logging.Formatter()
_listener: _LogThread | None = None


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
    lines: queue.SimpleQueue[_Line] = queue.SimpleQueue()
    _listener = _LogThread(lines, handler)
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
