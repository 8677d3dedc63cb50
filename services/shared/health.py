"""/healthz, /readyz and Prometheus /metrics on a small HTTP server thread.

Used by every service: the ones that are not web apps (ingest, inference, correlator, notifier,
recorder) serve only these; the api and pos serve them beside their public port (httpguard.serve).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest


def send_json(handler: BaseHTTPRequestHandler, status: int, body: dict) -> None:
    """Answer an http.server request with a JSON body."""
    data = json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


class HealthServer:
    """`routes` adds JSON GET endpoints of the service's own (ingest's /cameras, say)."""

    def __init__(
        self, host: str, port: int, ready: Callable[[], bool], details: Callable[[], dict] | None = None,
        routes: dict[str, Callable[[], dict]] | None = None,
    ) -> None:
        extra = dict(routes or {})

        class _Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path in extra:
                    send_json(self, 200, extra[self.path]())
                elif self.path == "/healthz":
                    send_json(self, 200, {"status": "ok"})
                elif self.path == "/readyz":
                    ok = ready()
                    send_json(self, 200 if ok else 503, {"ready": ok, **(details() if details else {})})
                elif self.path == "/metrics":
                    body = generate_latest()
                    self.send_response(200)
                    self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                else:
                    send_json(self, 404, {"error": f"no such path {self.path}"})

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer((host, port), _Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="health", daemon=True)

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
