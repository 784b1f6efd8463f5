"""Local stand-ins for HubSpot's and Stripe's list APIs on 127.0.0.1, each in a thread.

Both check the token (`Authorization: Bearer <token>`, else 401), page as the providers do
(HubSpot: `limit`, `after`, `paging.next.after`, no `paging` on the last page; Stripe:
`limit`, `starting_after`, `has_more`), and take scripted trouble: `trouble` is a queue of
answers given instead of the next pages (`(429, {"Retry-After": "1"})`, `(500, {})`), and
`hostile` replaces a page's body (raw bytes) by page number. `requests` records every page
asked for (path, cursor, Authorization), so tests see which pages were read and how often.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

TOKEN = "pat-na1-stub-token-4f1e9a0b"
STRIPE_KEY = "sk_test_stub_key_7c2d5e8f"


class _Stub:
    token: str

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.trouble: list[tuple[int, dict[str, str]]] = []
        self.hostile: dict[int, bytes] = {}  # page number (1-based) -> raw body
        self.delay = 0.0  # seconds before every answer
        self.clock_ahead = 0.0  # seconds the `Date` of every answer runs ahead of ours
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                stub._handle(self, None)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                stub._handle(self, json.loads(self.rfile.read(length) or b"{}"))

            def log_message(self, format: str, *args: Any) -> None:
                return

            def date_time_string(self, timestamp: float | None = None) -> str:
                return formatdate(time.time() + stub.clock_ahead, usegmt=True)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _handle(self, handler: BaseHTTPRequestHandler, body: Any) -> None:
        parts = urlsplit(handler.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        if self.delay:
            time.sleep(self.delay)
        auth = handler.headers.get("Authorization", "")
        with self.lock:
            record = {"path": parts.path, "query": query, "authorization": auth, "at": time.time()}
            self.requests.append(record)
            listing = not parts.path.endswith("/search")
            trouble = self.trouble.pop(0) if self.trouble and listing else None
        if auth != f"Bearer {self.token}":
            _send(handler, 401, {"message": "Authentication credentials not found."})
            return
        if trouble is not None:
            status, headers = trouble
            _send(handler, status, {"message": "stub trouble"}, headers)
            return
        answer = self.answer(parts.path, query, body)
        if answer is None:
            _send(handler, 404, {"message": "not found"})
            return
        number, page = answer
        raw = self.hostile.get(number)
        _send(handler, 200, page, {}, raw)

    def answer(
        self, path: str, query: dict[str, str], body: Any
    ) -> tuple[int, dict[str, Any]] | None:
        raise NotImplementedError

    def pages_read(self, path: str, key: str) -> list[str | None]:
        """The cursor of every page asked for at `path`, in order (None: the first page)."""
        return [r["query"].get(key) for r in self.requests if r["path"] == path]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _send(
    handler: BaseHTTPRequestHandler,
    status: int,
    body: Any,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> None:
    data = raw if raw is not None else json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(data)


class HubSpotStub(_Stub):
    """`GET /crm/v3/objects/companies` and `POST /crm/v3/objects/companies/search`."""

    COMPANIES = "/crm/v3/objects/companies"

    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        # id -> properties (every value a string or None, as HubSpot sends them)
        self.companies: dict[str, dict[str, str | None]] = {}
        self.cursor: Callable[[int], str] = lambda index: f"cur{index:06d}"
        # Never a last page: every page names a new cursor, its companies read round again.
        self.endless = False
        super().__init__()

    def answer(
        self, path: str, query: dict[str, str], body: Any
    ) -> tuple[int, dict[str, Any]] | None:
        ids = list(self.companies)
        if path == self.COMPANIES + "/search":
            return 0, {"total": len(ids), "results": []}
        if path != self.COMPANIES:
            return None
        limit = min(100, int(query.get("limit", "10")))
        after = query.get("after")
        start = int(after[3:]) if after else 0
        wanted = set(query.get("properties", "").split(","))
        results = [
            {
                "id": company_id,
                "properties": {
                    "hs_object_id": company_id,
                    **{k: v for k, v in self.companies[company_id].items() if k in wanted},
                },
                "createdAt": "2020-01-01T00:00:00Z",
                "updatedAt": "2020-01-01T00:00:00Z",
                "archived": False,
            }
            for company_id in (
                [ids[(start + i) % len(ids)] for i in range(limit)]
                if self.endless
                else ids[start : start + limit]
            )
        ]
        page: dict[str, Any] = {"results": results}
        if self.endless or start + limit < len(ids):
            page["paging"] = {"next": {"after": self.cursor(start + limit), "link": "x"}}
        return start // limit + 1, page


class StripeListStub(_Stub):
    """`GET /v1/customers` and `GET /v1/subscriptions?status=all`, newest first as Stripe."""

    def __init__(self, key: str = STRIPE_KEY) -> None:
        self.token = key
        self.customers: list[dict[str, Any]] = []
        self.subscriptions: list[dict[str, Any]] = []
        super().__init__()

    def answer(
        self, path: str, query: dict[str, str], body: Any
    ) -> tuple[int, dict[str, Any]] | None:
        if path == "/v1/customers":
            objects = self.customers
        elif path == "/v1/subscriptions":
            objects = self.subscriptions
            if query.get("status") != "all":
                objects = [s for s in objects if s.get("status") != "canceled"]
        else:
            return None
        limit = min(100, int(query.get("limit", "10")))
        after = query.get("starting_after")
        ids = [o["id"] for o in objects]
        start = ids.index(after) + 1 if after in ids else 0
        data = objects[start : start + limit]
        page = {"object": "list", "data": data, "has_more": start + limit < len(objects)}
        return start // limit + 1, page
