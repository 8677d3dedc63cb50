"""Camera sources: open them with OpenCV, never hang, and say in words why one cannot be opened.

OpenCV only answers "not opened"; an operator needs to know whether the file is missing or corrupt,
the device unplugged, the host wrong, the port closed, or the path or password wrong. `diagnose`
asks the source itself (a file's size, /dev, DNS, a TCP connect, an HTTP GET or RTSP DESCRIBE).
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import cv2

SourceKind = Literal["file", "rtsp", "http", "device"]
PROBE_TIMEOUT_S = 2.0


class SourceError(ConnectionError):
    """A camera source that cannot be opened; `permanent` when retrying cannot help (a bad file)."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


def source_kind(source: str) -> SourceKind:
    if source.startswith("rtsp://"):
        return "rtsp"
    if source.startswith(("http://", "https://")):
        return "http"
    if source.startswith("device:"):
        return "device"
    return "file"


def redact(source: str) -> str:
    """The source with any password in its URL replaced, for logs, errors and the status endpoint.

    Everything up to the last @ counts as user info, so a password holding an unencoded / or @
    is still hidden (a path with an @ in it is hidden too: safe rather than sorry).
    """
    scheme, sep, rest = source.partition("://")
    userinfo, at, host_and_path = rest.rpartition("@")
    if not sep or not at:
        return source
    user = userinfo.split(":", 1)[0] if ":" in userinfo else ""
    return f"{scheme}://{user}:***@{host_and_path}" if user else f"{scheme}://***@{host_and_path}"


def ffmpeg_capture_options(rtsp_transport: str) -> str:
    """OPENCV_FFMPEG_CAPTURE_OPTIONS: RTSP over TCP (no lost UDP packets behind NAT or a firewall),
    and half a second of stream analysis instead of FFmpeg's five. OpenCV opens one stream at a
    time per process, so this is what 64 cameras starting together wait for: about 0.75 s each."""
    return f"rtsp_transport;{rtsp_transport}|analyzeduration;500000"


def open_capture(camera_id: str, source: str, open_timeout_s: float, read_timeout_s: float) -> cv2.VideoCapture:
    """An opened capture, or SourceError naming the camera, the (redacted) source and the reason."""
    kind = source_kind(source)

    def refused(reason: str) -> SourceError:
        return SourceError(f"camera {camera_id}: cannot open source {redact(source)}: {reason}", permanent=kind == "file")

    if kind == "device":
        index = int(source.split(":", 1)[1])
        if not Path(f"/dev/video{index}").exists():
            raise refused(f"no such device /dev/video{index} (unplugged, or not passed to the container?)")
        cap = cv2.VideoCapture(index, cv2.CAP_V4L2)
    elif kind == "file":
        if not Path(source).is_file():
            raise refused("no such file")
        cap = cv2.VideoCapture(source, cv2.CAP_FFMPEG)
    else:
        # OpenCV opens FFmpeg streams one at a time in a process (a global lock), so a camera that
        # is down must fail here, before that lock, not hold every other camera's (re)connect.
        sock_or_reason = _connect(source, kind, open_timeout_s)
        if isinstance(sock_or_reason, str):
            raise refused(sock_or_reason)
        sock_or_reason.close()
        timeouts = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(open_timeout_s * 1000), cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(read_timeout_s * 1000)]
        cap = cv2.VideoCapture(source, cv2.CAP_FFMPEG, timeouts)
    if not cap.isOpened():
        cap.release()
        raise refused(diagnose(source))
    return cap

def diagnose(source: str) -> str:
    """Why OpenCV could not open `source`, as far as the source itself tells."""
    kind = source_kind(source)
    if kind == "file":
        path = Path(source)
        if not path.is_file():
            return "no such file"
        size = path.stat().st_size
        if size == 0:
            return "the file is empty"
        if not os.access(path, os.R_OK):
            return "the file is not readable by this process"
        return f"not a video OpenCV can decode ({size} bytes; corrupt, truncated or an unsupported format)"
    if kind == "device":
        device = f"/dev/video{source.split(':', 1)[1]}"
        if not os.access(device, os.R_OK | os.W_OK):
            return f"{device} exists but this process may not open it (add the user to the video group)"
        return f"{device} exists but is not a capture device, or another process holds it"
    return _diagnose_network(source, kind)


def _host_port(source: str, kind: SourceKind) -> tuple[str, int]:
    url = urlsplit(source)
    return url.hostname or "", url.port or {"rtsp": 554, "http": 443 if url.scheme == "https" else 80}[kind]


def _connect(source: str, kind: SourceKind, timeout_s: float) -> socket.socket | str:
    """A TCP connection to the source's host, or why there is none."""
    host, port = _host_port(source, kind)
    try:
        address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][4]
    except socket.gaierror:
        return f"host name {host!r} does not resolve"
    if not isinstance(address[0], str):  # (int, bytes): an IPv6 answer to a Python built without IPv6
        return f"{host} resolves to an IPv6 address first, and this Python was built without IPv6"
    try:
        return socket.create_connection(address[:2], timeout=timeout_s)
    except ConnectionRefusedError:
        return f"connection refused by {host}:{port} (nothing listens there: camera or server down, or wrong port)"
    except TimeoutError:
        return f"no answer from {host}:{port} within {timeout_s:.0f}s (host down or filtered)"
    except OSError as exc:
        return f"cannot connect to {host}:{port} ({exc.strerror or exc})"


def _diagnose_network(source: str, kind: SourceKind) -> str:
    sock = _connect(source, kind, PROBE_TIMEOUT_S)
    if isinstance(sock, str):
        return sock
    url = urlsplit(source)
    host, port = _host_port(source, kind)
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    with sock:
        if kind == "http" and url.scheme == "https":
            return "the server accepts connections but OpenCV could not read a video stream from it"
        sock.settimeout(PROBE_TIMEOUT_S)
        try:
            if kind == "rtsp":
                plain_url = f"rtsp://{host}:{port}{path}"
                sock.sendall(f"DESCRIBE {plain_url} RTSP/1.0\r\nCSeq: 1\r\nAccept: application/sdp\r\n\r\n".encode())
            else:
                sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            head = sock.recv(4096).decode("latin-1")
        except OSError as exc:
            return f"{host}:{port} accepted the connection but did not answer ({exc})"
    return _explain_status(kind, head, has_credentials=url.username is not None)


def _explain_status(kind: SourceKind, head: str, has_credentials: bool) -> str:
    status_line = head.split("\r\n", 1)[0]
    match = re.match(r"^(RTSP|HTTP)/\d\.\d (\d{3}) ?(.*)$", status_line)
    if not match:
        return f"the server does not speak {kind.upper()} (it answered {status_line[:60]!r})"
    protocol, code, reason = match.group(1), int(match.group(2)), match.group(3)
    if code == 404:
        return f"{protocol} {code} {reason}: the server has no stream at this path"
    if code == 401:
        return f"{protocol} 401 {reason}: " + ("check the user name and password in the URL" if has_credentials else "the stream needs a user name and password in the URL")
    if code >= 400:
        return f"{protocol} {code} {reason}"
    if kind == "http":
        content_type = re.search(r"(?im)^content-type:\s*([^\r\n;]+)", head)
        found = content_type.group(1).strip() if content_type else "none"
        if not found.startswith(("multipart/", "video/", "image/")):
            return f"{protocol} {code}, but the content type is {found}, not a video stream (MJPEG is multipart/x-mixed-replace)"
    return f"the server answers {protocol} {code} but OpenCV could not read a video stream from it (codec or format)"
