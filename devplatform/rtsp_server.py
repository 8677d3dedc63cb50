"""A real RTSP camera for tests and demos: GStreamer's RTSP server streaming H.264 from a test pattern.

ffmpeg cannot serve RTSP to readers, so this uses gst-rtsp-server through PyGObject. Both come from
Debian's packages (gir1.2-gst-rtsp-server-1.0, python3-gi, gstreamer1.0-plugins-good/-ugly), which
live in Debian's own Python, not in the project's virtual environment: run it as
`/usr/bin/python3 devplatform/rtsp_server.py --port 8554 --mount /cam` (this file imports nothing of
the project). It prints `ready rtsp://127.0.0.1:PORT/MOUNT` once it listens, and runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402 (versions must be required first)


def launch_line(width: int, height: int, fps: int, pattern: str) -> str:
    """A live test pattern encoded like an IP camera does: H.264, a keyframe every second."""
    return (
        f"( videotestsrc is-live=true pattern={pattern} ! video/x-raw,width={width},height={height},framerate={fps}/1 "
        f"! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} ! rtph264pay name=pay0 pt=96 )"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8554)
    parser.add_argument("--mount", action="append", help="path to serve, e.g. /cam (repeatable; default /cam)")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--fps", type=int, default=10)
    parser.add_argument("--pattern", default="ball", help="videotestsrc pattern: ball (moving), smpte (static), ...")
    args = parser.parse_args(argv)

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address(args.host)
    server.set_service(str(args.port))
    mounts = server.get_mount_points()
    for mount in args.mount or ["/cam"]:
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(launch_line(args.width, args.height, args.fps, args.pattern))
        # One encoder per mount however many clients read it, like a camera's single stream.
        factory.set_shared(True)
        mounts.add_factory(mount, factory)
    if server.attach(None) == 0:
        print(f"cannot listen on {args.host}:{args.port}", file=sys.stderr, flush=True)
        return 1
    loop = GLib.MainLoop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signum, loop.quit)
    for mount in args.mount or ["/cam"]:
        print(f"ready rtsp://{args.host}:{args.port}{mount}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
