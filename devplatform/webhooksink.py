"""Receivers for the local platform: a signed-webhook endpoint and an ntfy-compatible push server.

Stands in for the chain's own webhook endpoint (a ticketing system, a chat bridge) and for an ntfy
server (the phones' push service) so the demo, the tests and the benchmark see exactly what the
notifier delivered, and how many times. Every accepted request is one JSON line in `--record`:

- `POST /alerts`: a ShrinkWatch webhook. With `--secret` its signature is checked the way the
  docs/notifications.md tells receivers to (HMAC over timestamp and body, at most 5 minutes old); a forged or stale
  request gets 401 and is not recorded as a delivery. `GET /alerts` lists what was recorded.
- `POST /` with a JSON body (`topic`, `message`, `title`, ...) and `PUT|POST /<topic>` with a file
  (`?filename=&title=&message=`): ntfy's publish API, as Apprise's ntfy plugin speaks it.
"""

from __future__ import annotations

import argparse
import json
import secrets
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from services.shared.correlation import CORRELATION_HEADER, TRACEPARENT_HEADER
from services.shared.health import send_json
from services.shared.webhooks import ALERT_HEADER, DELIVERY_HEADER, SignatureError, verify

MAX_BODY = 16 * 1024 * 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--record", type=Path, required=True, help="JSON lines file of received deliveries (appended to)")
    parser.add_argument("--ready-file", type=Path)
    parser.add_argument("--secret", default="", help="check webhook signatures with this shared secret")
    args = parser.parse_args(argv)
    lock = threading.Lock()

    def record(entry: dict) -> None:
        with lock, args.record.open("a") as fh:
            fh.write(json.dumps(entry) + "\n")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out as two writes; without this, Nagle and delayed ACKs add 40 ms per kept-alive request.
        disable_nagle_algorithm = True

        def _body(self) -> bytes | None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                send_json(self, 413, {"error": f"body over {MAX_BODY} bytes"})
                return None
            return self.rfile.read(length)

        def do_POST(self) -> None:
            body = self._body()
            if body is None:
                return
            path = urlsplit(self.path).path
            if path == "/alerts":
                self._webhook(body)
            else:
                self._ntfy(path, body)

        do_PUT = do_POST

        def _webhook(self, body: bytes) -> None:
            received = time.time()
            signature = "unsigned"
            if args.secret:
                try:
                    verify(args.secret, self.headers, body, now=received)
                    signature = "valid"
                except SignatureError as exc:
                    send_json(self, 401, {"error": str(exc)})
                    return
            try:
                payload = json.loads(body)
            except json.JSONDecodeError:
                send_json(self, 400, {"error": "body is not JSON"})
                return
            record({"received_ms": int(received * 1000), "kind": "webhook", "path": "/alerts", "signature": signature,
                    "alert_id": self.headers.get(ALERT_HEADER, ""), "delivery_id": self.headers.get(DELIVERY_HEADER, ""),
                    "correlation_id": self.headers.get(CORRELATION_HEADER, ""), "traceparent": self.headers.get(TRACEPARENT_HEADER, ""), "body": payload})
            send_json(self, 200, {"ok": True})

        def _ntfy(self, path: str, body: bytes) -> None:
            received = int(time.time() * 1000)
            query = {k: v[-1] for k, v in parse_qs(urlsplit(self.path).query).items()}
            if path == "/":
                try:
                    message = json.loads(body)
                    topic = str(message["topic"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    send_json(self, 400, {"code": 40001, "http": 400, "error": "invalid request: JSON body with a topic expected"})
                    return
                attachment = 0
            else:
                topic, message, attachment = path.strip("/"), {"topic": path.strip("/"), **query}, len(body)
            headers = {k.lower(): v for k, v in self.headers.items() if k.lower().startswith("x-")}
            record({"received_ms": received, "kind": "ntfy", "path": path, "topic": topic, "title": message.get("title", ""),
                    "message": message.get("message", ""), "filename": message.get("filename", ""), "attachment_bytes": attachment, "headers": headers})
            send_json(self, 200, {"id": secrets.token_hex(6), "time": received // 1000, "event": "message", "topic": topic})

        def do_GET(self) -> None:
            entries = [json.loads(line) for line in args.record.read_text().splitlines()] if args.record.exists() else []
            kind = "ntfy" if urlsplit(self.path).path != "/alerts" else "webhook"
            send_json(self, 200, {"deliveries": [e for e in entries if e.get("kind", "webhook") == kind]})

        def log_message(self, *a: object) -> None:
            pass

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    port = server.server_address[1]
    if args.ready_file:
        args.ready_file.write_text(json.dumps({"url": f"http://{args.host}:{port}/alerts", "ntfy": f"ntfy://{args.host}:{port}", "port": port}))
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
