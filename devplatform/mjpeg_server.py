"""A real HTTP MJPEG camera for tests and demos: `python -m devplatform.mjpeg_server --port 8081`.

Serves `multipart/x-mixed-replace` JPEG frames at /video, the way many IP cameras and Frigate's
restream do: a moving disc over a still background, with the frame number drawn in, at --fps.
Any other path answers 404. Prints `ready http://HOST:PORT/video` once it listens.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np

BOUNDARY = "frame"


def test_pattern(index: int, width: int, height: int) -> np.ndarray:
    image = np.zeros((height, width, 3), np.uint8)
    image[:] = (60, 90, 120)
    cv2.rectangle(image, (width // 10, height // 10), (width // 3, height // 2), (200, 200, 200), -1)
    x = int((index * 7) % width)
    cv2.circle(image, (x, height * 2 // 3), max(4, height // 12), (20, 220, 240), -1)
    cv2.putText(image, str(index), (8, height - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1)
    return image


def make_handler(width: int, height: int, fps: float, stop: threading.Event) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/video":
                self.send_error(404, "no stream here; the stream is at /video")
                return
            self.send_response(200)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            started, index = time.monotonic(), 0
            while not stop.is_set():
                _, jpeg = cv2.imencode(".jpg", test_pattern(index, width, height), [cv2.IMWRITE_JPEG_QUALITY, 80])
                part = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {jpeg.size}\r\n\r\n".encode() + jpeg.tobytes() + b"\r\n"
                try:
                    self.wfile.write(part)
                    self.wfile.flush()
                except OSError:
                    return  # the reader went away
                index += 1
                delay = started + index / fps - time.monotonic()
                if delay > 0:
                    time.sleep(delay)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--fps", type=float, default=10.0)
    args = parser.parse_args(argv)
    stop = threading.Event()
    server = ThreadingHTTPServer((args.host, args.port), make_handler(args.width, args.height, args.fps, stop))
    server.daemon_threads = True

    def shutdown(*_: object) -> None:
        stop.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    print(f"ready http://{args.host}:{server.server_address[1]}/video", flush=True)
    server.serve_forever()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
