"""A webhook receiver for the local platform: records every POST it gets, shows them on GET.

Stands in for the chain's own webhook endpoint (a ticketing system, a chat bridge) so the demo
and the end-to-end tests can see exactly what the notifier delivered, and how many times.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from services.shared.health import send_json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--record", type=Path, required=True, help="JSON lines file of received deliveries")
    parser.add_argument("--ready-file", type=Path)
    args = parser.parse_args(argv)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                payload = json.loads(body)
            except json.JSONDecodeError:
                send_json(self, 400, {"error": "body is not JSON"})
                return
            entry = {"received_ms": int(time.time() * 1000), "path": self.path,
                     "alert_id": self.headers.get("X-ShrinkWatch-Alert-Id", ""), "body": payload}
            with lock, args.record.open("a") as fh:
                fh.write(json.dumps(entry) + "\n")
            send_json(self, 200, {"ok": True})

        def do_GET(self) -> None:
            entries = [json.loads(line) for line in args.record.read_text().splitlines()] if args.record.exists() else []
            send_json(self, 200, {"deliveries": entries})

        def log_message(self, *a: object) -> None:
            pass

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    port = server.server_address[1]
    if args.ready_file:
        args.ready_file.write_text(json.dumps({"url": f"http://{args.host}:{port}/alerts", "port": port}))
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
