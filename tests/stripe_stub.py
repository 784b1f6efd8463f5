"""A local stand-in for Stripe's API: `GET /v1/customers/{id}` on 127.0.0.1, in a thread.

Tests put customers in `customers`, point the relay's `STRIPE_API_BASE` at `url`, and read
`requests` to see what the relay asked (path and Authorization header).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import unquote


class StripeStub:
    def __init__(self) -> None:
        self.customers: dict[str, dict[str, Any]] = {}
        self.requests: list[dict[str, str]] = []
        self.fail_with: int | None = None  # answer this status to every request when set
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                stub.requests.append(
                    {"path": self.path, "authorization": self.headers.get("Authorization", "")}
                )
                if stub.fail_with is not None:
                    self._send(stub.fail_with, {"error": {"message": "stub failure"}})
                    return
                prefix = "/v1/customers/"
                customer_id = (
                    unquote(self.path[len(prefix) :]) if self.path.startswith(prefix) else ""
                )
                customer = stub.customers.get(customer_id)
                if customer is None:
                    self._send(
                        404,
                        {
                            "error": {
                                "code": "resource_missing",
                                "message": f"No such customer: '{customer_id}'",
                                "type": "invalid_request_error",
                            }
                        },
                    )
                    return
                self._send(200, customer)

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

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
