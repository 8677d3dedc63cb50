"""Benchmark: ingest's frames/s through the service into the broker, over a bare OpenCV loop, same run.

The bare loop is the limit on this machine: decode a 720p H.264 file, resize to 640x360, JPEG
encode, nothing else. The service does the same plus everything it adds in production: the motion
detector, the Frame protobuf, the send queue and the Kafka producer, with the broker (the local
Apache Kafka broker, one KRaft node started here) acknowledging every frame. ratio = service
frames/s over bare frames/s, each the best of --repeats alternating runs; the motion gate is off for
this part so both encode every frame. Then the same clip, a mostly static aisle that a person
crosses for a tenth of the time, goes through the service with the motion gate on: the JSON says
how many bytes that saved.

    make bench-ingest ARGS="--seconds 60 --repeats 3"
    make bench-ingest ARGS="--live-cameras 64"   # many RTSP cameras in one process instead
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from devplatform.launcher import ROOT, Platform, free_port
from devplatform.progress import Progress
from services.ingest.camera import IngestOptions
from services.ingest.service import IngestService
from services.ingest.sources import ffmpeg_capture_options
from services.shared.kafka import make_producer
from services.shared.storeconfig import StoreConfig

WIDTH, HEIGHT, FPS = 1280, 720, 15
OUT_WIDTH, OUT_HEIGHT, QUALITY = 640, 360, 85


def aisle_frames(seconds: float):
    """A still shop aisle with sensor noise; a person crosses it during a tenth of the clip."""
    rng = np.random.default_rng(7)
    background: np.ndarray = np.full((HEIGHT, WIDTH, 3), 150, np.uint8)
    for shelf in range(4):  # shelves of coloured products, textured like packaging
        y = 60 + shelf * 160
        cv2.rectangle(background, (0, y + 120), (WIDTH, y + 135), (90, 90, 90), -1)
        for x in range(0, WIDTH, 40):
            colour = tuple(int(c) for c in rng.integers(30, 230, 3))
            cv2.rectangle(background, (x + 4, y + 20), (x + 36, y + 118), colour, -1)
    texture = cv2.GaussianBlur(rng.integers(0, 40, (HEIGHT, WIDTH, 3), dtype=np.uint8), (5, 5), 0)
    background = cv2.add(background, texture)
    total = int(seconds * FPS)
    walk_from, walk_to = int(total * 0.45), int(total * 0.55)
    for index in range(total):
        frame = cv2.add(background, rng.integers(0, 3, background.shape, dtype=np.uint8))
        if walk_from <= index < walk_to:
            x = int(WIDTH * (index - walk_from) / (walk_to - walk_from))
            cv2.ellipse(frame, (x, 300), (40, 50), 0, 0, 360, (60, 70, 90), -1)
            cv2.rectangle(frame, (x - 60, 350), (x + 60, 650), (40, 50, 120), -1)
        yield frame


def write_clip(path: Path, seconds: float) -> str:
    """The benchmark's input: H.264 (what cameras send) from GStreamer's x264enc.

    Without it there is no fair substitute (OpenCV's own MPEG-4 decodes at a different speed), so
    the benchmark stops and says what to install instead of measuring something else."""
    if not shutil.which("gst-launch-1.0"):
        raise SystemExit("bench-ingest: gst-launch-1.0 is missing, so the H.264 input clip cannot be made; "
                         "`make setup` installs it (Debian: gstreamer1.0-tools, gstreamer1.0-plugins-ugly for x264enc)")
    pipeline = (f"gst-launch-1.0 -q fdsrc fd=0 ! rawvideoparse width={WIDTH} height={HEIGHT} format=bgr framerate={FPS}/1 "
                f"! videoconvert ! x264enc speed-preset=veryfast key-int-max={FPS * 2} ! h264parse ! mp4mux ! filesink location={path}")
    proc = subprocess.Popen(pipeline.split(), stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stderr is not None
    with Progress(f"encoding the {seconds:.0f} s 720p H.264 input clip", int(seconds * FPS), "frames") as progress:
        try:
            for frame in aisle_frames(seconds):
                proc.stdin.write(frame.tobytes())
                progress.advance()
            proc.stdin.close()
        except BrokenPipeError:
            pass  # GStreamer stopped reading: its error is read below
    errors = proc.stderr.read().decode(errors="replace").strip()
    if proc.wait() != 0 or not path.exists() or path.stat().st_size == 0:
        raise SystemExit(f"bench-ingest: GStreamer could not encode the H.264 input clip (exit {proc.returncode}): {errors or 'no message'}; "
                         "`make setup` installs gstreamer1.0-tools and gstreamer1.0-plugins-ugly (x264enc)")
    return "h264"


def bare_loop(path: Path) -> tuple[int, float]:
    """The limit: decode, resize, encode, nothing else."""
    started = time.perf_counter()
    cap, frames = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG), 0
    while True:
        ok, image = cap.read()
        if not ok:
            break
        small = cv2.resize(image, (OUT_WIDTH, OUT_HEIGHT), interpolation=cv2.INTER_AREA)
        cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, QUALITY])
        frames += 1
    cap.release()
    return frames, time.perf_counter() - started


def through_service(path: Path, bootstrap: str, gate: bool, topic: str) -> tuple[dict, float]:
    """The ingest service on one file camera, timed until the broker acknowledged every frame."""
    config = StoreConfig(chain="bench", stores=[{
        "id": "store-bench", "timezone": "UTC",
        "cameras": [{"id": "cam-aisle", "source": f"file:{path}", "fps": FPS, "width": OUT_WIDTH, "height": OUT_HEIGHT,
                     "jpeg_quality": QUALITY, "motion": {"enabled": gate}}],
    }])
    producer = make_producer(bootstrap, **{"message.timeout.ms": 30_000})
    started = time.perf_counter()
    service = IngestService(producer, IngestOptions(pace="fast", send_queue_frames=60, drain_s=60), topic=topic).start(config)
    service.wait_finished(600)
    service.stop()  # delivers what is queued and waits for the broker's acknowledgements
    elapsed = time.perf_counter() - started
    camera = service.cameras()["cam-aisle"]
    if camera["state"] != "finished" or camera["dropped"]:
        raise SystemExit(f"the service did not play the clip cleanly: {camera}")
    return camera, elapsed


def live_cameras(count: int, seconds: float) -> dict:
    """`count` RTSP cameras (640x360, 10 fps, H.264 from GStreamer's RTSP server) in one ingest
    process: how long they take to connect, each camera's frame rate, and the cores ingest uses."""
    os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", ffmpeg_capture_options("tcp"))
    port = free_port()
    server = subprocess.Popen(["/usr/bin/python3", str(ROOT / "devplatform" / "rtsp_server.py"), f"--port={port}",
                               "--width=640", "--height=360", "--fps=10"], stdout=subprocess.PIPE)
    try:
        assert server.stdout is not None
        server.stdout.readline()  # "ready ..."
        with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
            platform = Platform(run_dir=Path(tmp))
            try:
                platform.start_broker()
                cameras = [{"id": f"cam-{i:02d}", "source": f"rtsp://127.0.0.1:{port}/cam", "fps": 10, "width": 640, "height": 360}
                           for i in range(count)]
                config = StoreConfig(chain="bench", stores=[{"id": "store-bench", "timezone": "UTC", "cameras": cameras}])
                service = IngestService(make_producer(platform.env["SW_KAFKA_BOOTSTRAP_SERVERS"]), IngestOptions()).start(config)
                started = time.monotonic()
                while not all(c["state"] == "connected" for c in service.cameras().values()):
                    if time.monotonic() - started > 5 + count * 3:
                        raise SystemExit(f"cameras did not all connect: {service.cameras()}")
                    time.sleep(0.25)
                connect_s = time.monotonic() - started
                time.sleep(6)  # let every camera's 5 s rate window fill
                cpu0, t0 = time.process_time(), time.monotonic()
                time.sleep(seconds)
                cores = (time.process_time() - cpu0) / (time.monotonic() - t0)
                status = service.cameras()
                service.stop()
            finally:
                platform.down(echo=lambda *_: None)
    finally:
        server.terminate()
        server.wait()
    fps = [c["fps"] for c in status.values()]
    return {"cameras": count, "all_connected_s": round(connect_s, 1), "fps_min": min(fps), "fps_max": max(fps),
            "ingest_cores": round(cores, 2), "dropped": sum(sum(c["dropped"].values()) for c in status.values()),
            "camera": "RTSP H.264 640x360 10 fps, motion gate on"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the generated clip at 15 fps")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--live-cameras", type=int, default=0,
                        help="instead: this many live RTSP cameras in one process; prints their frame rates and CPU as JSON")
    args = parser.parse_args(argv)
    if args.live_cameras:
        print(json.dumps(live_cameras(args.live_cameras, seconds=10.0)))
        return 0

    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        clip = Path(tmp) / "aisle-720p.mp4"
        codec = write_clip(clip, args.seconds)
        platform = Platform(run_dir=Path(tmp) / "run")
        try:
            platform.start_broker()
            bootstrap = platform.env["SW_KAFKA_BOOTSTRAP_SERVERS"]
            bare_fps: list[float] = []
            service_fps: list[float] = []
            print(f"measuring: {args.repeats} runs of the bare OpenCV loop and of the ingest service, then the motion gate", flush=True)
            for repeat in range(args.repeats):
                frames, seconds = bare_loop(clip)
                bare_fps.append(frames / seconds)
                camera, seconds = through_service(clip, bootstrap, gate=False, topic="sw.frames.v1")
                assert camera["frames_published"] == frames, (camera, frames)
                service_fps.append(frames / seconds)
                ungated_bytes = camera["bytes_published"]
                print(f"run {repeat + 1}: bare OpenCV {bare_fps[-1]:.1f} frames/s, service into the broker {service_fps[-1]:.1f} frames/s", flush=True)
            print("motion gate run...", flush=True)
            gated, _ = through_service(clip, bootstrap, gate=True, topic="sw.frames.v1")
        finally:
            platform.down(echo=lambda *_: None)

    saved = ungated_bytes - gated["bytes_published"]
    print(f"motion gate on the mostly static clip: {gated['frames_published']} of {frames} frames sent, "
          f"{gated['bytes_published'] / 1e6:.1f} MB instead of {ungated_bytes / 1e6:.1f} MB ({saved / ungated_bytes:.0%} saved)")
    summary = {
        "ratio": round(max(service_fps) / max(bare_fps), 3),
        "service_fps": round(max(service_fps), 1),
        "opencv_fps": round(max(bare_fps), 1),
        "frames": frames,
        "input": f"{WIDTH}x{HEIGHT} {codec} {FPS} fps",
        "output": f"{OUT_WIDTH}x{OUT_HEIGHT} JPEG q{QUALITY}",
        "motion_gate": {
            "frames_sent": gated["frames_published"],
            "keyframes": gated["keyframes"],
            "bytes_without_gate": ungated_bytes,
            "bytes_with_gate": gated["bytes_published"],
            "bytes_saved": saved,
            "fraction_saved": round(saved / ungated_bytes, 3),
        },
        "device": "cpu",
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
