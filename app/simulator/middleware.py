"""The pure ASGI layer in front of every route: request ids, the request log, faults.

It sits outside the routing so it sees every request to a Userpilot path, known or not: it
stamps a fresh `x-request-id` on every response, records the request for `/_sim/requests`,
tracks how many requests (and how many per company) are in flight, and applies the next
matching injected fault before the request reaches the routes.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.simulator.config import (
    BULK_PATH,
    CONTROL_PREFIX,
    DELETE_PATH,
    IDENTIFY_PATH,
    USERS_BULK_PATH,
)
from app.simulator.connection import drop_connection
from app.simulator.errors import error_body
from app.simulator.state import Fault, RecordedRequest, SimulatorState
from app.simulator.validation import summarize_bulk, try_parse_json

# Where routes find the id stamped on their answer (a deletion records it).
REQUEST_ID_KEY = "simulator.request_id"
# Bulk uploads are logged as a summary (row count, first ids), not their up to 10,000 rows.
_BULK_LOGGED = {BULK_PATH: ("companies", "company_id"), USERS_BULK_PATH: ("users", "user_id")}


class _ClientGoneError(Exception):
    """The client disconnected before sending its whole body."""


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGoneError
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replaying(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the already-read body to the app, then defers to the server."""
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _fault_response(fault: Fault) -> Response:
    if fault.action == "retry_after":
        status = 429
        retry_after: int | float | str | None = (
            2 if fault.retry_after is None else fault.retry_after
        )
    else:
        status = fault.status
        retry_after = fault.retry_after
    headers = {} if retry_after is None else {"retry-after": _header_value(retry_after)}
    if status < 200 or status in (204, 304):
        return Response(status_code=status, headers=headers)
    if fault.body is None:
        return JSONResponse(
            error_body(status, f"simulated {status} ({fault.action} fault)"),
            status_code=status,
            headers=headers,
        )
    if isinstance(fault.body, str):
        return Response(fault.body, status_code=status, headers=headers, media_type="text/plain")
    return JSONResponse(fault.body, status_code=status, headers=headers)


def _header_value(value: int | float | str) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class SimulatorMiddleware:
    """Request id, request log, in-flight counters and fault injection."""

    def __init__(self, app: ASGIApp, state: SimulatorState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = str(uuid.uuid4())
        scope[REQUEST_ID_KEY] = request_id
        record: RecordedRequest | None = None
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
                MutableHeaders(scope=message).append("x-request-id", request_id)
                if record is not None:
                    record.status = message["status"]
            await send(message)

        try:
            if scope["path"].startswith(CONTROL_PREFIX):
                await self.app(scope, receive, send_with_id)
                return
            try:
                body = await _read_body(receive)
            except _ClientGoneError:
                return
            record = self._record(scope, body)
            await self._handle(scope, _replaying(body, receive), send_with_id, record, receive)
        except Exception:
            # Answer with our request id rather than letting the outer 500 go out without it.
            if not response_started:
                response = JSONResponse(error_body(500, "simulator error"), status_code=500)
                await response(scope, receive, send_with_id)
            raise

    def _record(self, scope: Scope, body: bytes) -> RecordedRequest:
        headers = Headers(scope=scope)
        path: str = scope["path"]
        content_type = headers.get("content-type", "")
        parsed: object
        if path in _BULK_LOGGED:
            collection, id_field = _BULK_LOGGED[path]
            parsed = summarize_bulk(body, content_type, collection=collection, id_field=id_field)
        elif "multipart/" in content_type:
            parsed = None
        else:
            parsed = try_parse_json(body)
        company_id: str | None = None
        if path == IDENTIFY_PATH and isinstance(parsed, dict):
            value = parsed.get("company_id")
            company_id = value if isinstance(value, str) else None
        record = RecordedRequest(
            time=time.time(),
            method=scope["method"],
            path=path,
            headers={key: ", ".join(headers.getlist(key)) for key in headers},
            body=parsed,
            company_id=company_id,
        )
        self.state.requests.append(record)
        if scope["method"] == "POST" and path == IDENTIFY_PATH:
            self.state.stats.identify_calls += 1
        elif scope["method"] == "POST" and path == BULK_PATH:
            self.state.stats.bulk_calls += 1
        elif scope["method"] == "DELETE" and path == DELETE_PATH:
            self.state.stats.delete_calls += 1
        return record

    async def _handle(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        record: RecordedRequest,
        server_receive: Receive,
    ) -> None:
        state = self.state
        state.request_started(record.company_id)
        try:
            fault = state.take_fault(record.path, record.company_id, record.method)
            if fault is not None and fault.action == "delay":
                await asyncio.sleep(fault.delay)
            elif fault is not None and fault.action == "lose_answer":
                # Handled as usual (a bulk upload starts its job), but the answer never leaves.
                async def swallow(message: Message) -> None:
                    if message["type"] == "http.response.start":
                        record.status = message["status"]

                await self.app(scope, receive, swallow)
                state.stats.dropped += 1
                await drop_connection(server_receive)
                return
            elif fault is not None and fault.action == "drop":
                record.status = 0
                state.stats.dropped += 1
                await drop_connection(server_receive)
                return
            elif fault is not None:
                await _fault_response(fault)(scope, receive, send)
                return
            await self.app(scope, receive, send)
        finally:
            state.request_finished(record.company_id)
