"""`shrinkwatch`: the developer command line (local platform, sample store, models, demo)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from devplatform.launcher import DEFAULT_RUN_DIR, ROOT, LaunchError, Platform
from modeling.packages import PackageError
from modeling.torch_checkpoint import CheckpointError


def print_cameras(ingest_http: str) -> None:
    """One line per camera from ingest's /cameras: state, rates, drops and the last error."""
    import httpx

    try:
        cameras = httpx.get(ingest_http + "/cameras", timeout=3).json()["cameras"]
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        print(f"      (cameras unavailable: {exc})")
        return
    for camera_id, cam in cameras.items():
        age = "never" if cam["last_frame_age_s"] is None else f"{cam['last_frame_age_s']:.1f}s ago"
        dropped = sum(cam["dropped"].values())
        print(f"      camera {camera_id:<16} {cam['state']:<12} {cam['fps']:>5.1f} fps in, {cam['sent_fps']:>5.1f} sent, "
              f"last frame {age}, {dropped} dropped{'  ' + cam['last_error'] if cam['last_error'] and cam['state'] != 'connected' else ''}")


def _platform(args: argparse.Namespace) -> Platform:
    return Platform(run_dir=args.run_dir, store_config=args.store_config, api_port=args.api_port, ingest_pace=args.pace,
                    brokers=getattr(args, "brokers", 1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="shrinkwatch", description=__doc__)
    parser.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR, help="where PIDs, logs and runtime.json live")
    parser.add_argument("--store-config", type=Path, default=ROOT / "config" / "sample-store.yaml")
    parser.add_argument("--api-port", type=int, default=8080)
    parser.add_argument("--pace", choices=("realtime", "fast"), default="realtime", help="how file cameras play")
    sub = parser.add_subparsers(dest="command", required=True)
    dev = sub.add_parser("dev", help="the local platform").add_subparsers(dest="action", required=True)
    up = dev.add_parser("up", help="start Apache Kafka, redis, model server and the services")
    up.add_argument("--brokers", type=int, choices=(1, 3), default=1,
                    help="Kafka nodes: 1, or 3 (replication factor 3, min.insync.replicas 2, as production) for fault tests")
    dev.add_parser("status", help="show what runs, with PIDs and readiness")
    dev.add_parser("down", help="stop everything that `up` started")
    sub.add_parser("sample-store", help="generate the sample store's video and POS script into var/sample")
    models = sub.add_parser("models", help="models").add_subparsers(dest="action", required=True)
    models.add_parser("build", help="train and export the models the sample store needs")
    train = models.add_parser("train-anomaly", help="train an anomaly model on a camera's normal footage and publish a new version")
    train.add_argument("--data", type=Path, required=True, help="a folder of frames, a video, or a folder of clips (sub-folders or videos)")
    train.add_argument("--name", default="anomaly", help="model name in models.config (one per camera view)")
    train.add_argument("--epochs", type=int, default=12)
    train.add_argument("--models-dir", type=Path, default=ROOT / "models")
    detector = models.add_parser("export-detector", help="publish a new version of the person and object detector (NanoDet, from its pinned npm package)")
    choice = detector.add_mutually_exclusive_group()
    choice.add_argument("--hog", action="store_true", help="the HOG person detector instead (OpenCV's SVM as TensorFlow ops; weaker)")
    choice.add_argument("--yolo11n-pose", action="store_true",
                        help="YOLO11n-pose instead (persons with keypoints; stronger on hard cameras, 5x the CPU; its weights are AGPL-3.0)")
    detector.add_argument("--input-size", type=int, default=1280, help="with --yolo11n-pose: the longer side fed to the network (multiple of 32)")
    detector.add_argument("--min-person-px", type=int, default=48, help="with --hog: smallest person height to find, in pixels of the frames sent")
    detector.add_argument("--name", default="detector")
    detector.add_argument("--models-dir", type=Path, default=ROOT / "models")
    users = sub.add_parser("users", help="the api's users").add_subparsers(dest="action", required=True)
    users.add_parser("hash", help="an argon2 hash of a password (read from the terminal or standard input) for the users file")
    pos_keys = sub.add_parser("pos-keys", help="the POS gateway's per-store API keys").add_subparsers(dest="action", required=True)
    make_key = pos_keys.add_parser("new", help="make a key: prints it once, and the line for the keys file (its SHA-256, never the key)")
    make_key.add_argument("--name", required=True, help="who holds it, e.g. tills-store-001 (named in logs and refusals)")
    scope = make_key.add_mutually_exclusive_group(required=True)
    scope.add_argument("--store", action="append", help="a store it may publish for (repeat for several)")
    scope.add_argument("--all-stores", action="store_true", help="every store (a chain-wide POSLog export)")
    demo = sub.add_parser("demo", help="run the sample store through the whole pipeline")
    demo.add_argument("--keep-running", action="store_true", help="leave the platform up afterwards")
    args = parser.parse_args(argv)

    try:
        if args.command == "dev":
            platform = _platform(args)
            if args.action == "up":
                from devplatform.demo import ensure_sample_assets

                ensure_sample_assets()
                platform.up()
                print(f"Platform is up; addresses in {platform.runtime_file}")
            elif args.action == "down":
                platform.down()
            else:
                status = platform.status()
                if not status:
                    print("nothing is running")
                for name, comp in status.items():
                    where = comp.get("http") or comp.get("bootstrap_servers") or comp.get("url") or comp.get("address") or ""
                    state = "ready" if comp["ready"] else ("running, not ready" if comp["alive"] else "DEAD")
                    print(f"  {name:<13} pid {comp['pid']:<7} {state:<18} {where}")
                    if name == "ingest" and comp["ready"]:
                        print_cameras(comp["http"])
                return 0 if status and all(c["ready"] for c in status.values()) else 1
        elif args.command == "sample-store":
            from devplatform import samplestore

            for kind, path in samplestore.generate(ROOT / "var" / "sample").items():
                print(f"  {kind}: {path}")
        elif args.command == "models" and args.action == "train-anomaly":
            from modeling.anomaly import TrainConfig, train_and_export

            out, _ = train_and_export(args.data, args.models_dir, args.name, TrainConfig(epochs=args.epochs))
            print(f"published {out}")
        elif args.command == "models" and args.action == "export-detector":
            if args.hog:
                from modeling.detector import DetectorConfig, build_and_export

                print(f"published {build_and_export(args.models_dir, args.name, DetectorConfig(min_person_px=args.min_person_px))}")
            elif args.yolo11n_pose:
                from modeling import yolo_pose

                print(f"published {yolo_pose.build_and_export(args.models_dir, args.name, yolo_pose.YoloPoseConfig(input_size=args.input_size))}")
            else:
                from modeling import nanodet

                print(f"published {nanodet.build_and_export(args.models_dir, args.name)}")
        elif args.command == "models":
            from devplatform.demo import ensure_sample_assets

            ensure_sample_assets()
            print(json.dumps({p.parent.name: p.name for p in sorted((ROOT / "models").glob("*/[0-9]*"))}))
        elif args.command == "users":
            import getpass

            from services.api.auth import hash_password

            password = getpass.getpass("password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
            if len(password) < 12:
                raise ValueError("use a password of at least 12 characters")
            print(hash_password(password))
        elif args.command == "pos-keys":
            from services.pos.gateway.keys import file_line, new_key
            from services.shared.storeconfig import load_store_config

            unknown = sorted(set(args.store or []) - {s.id for s in load_store_config(args.store_config).stores})
            if unknown:
                raise ValueError(f"stores not in {args.store_config}: {unknown}")
            key = new_key()
            print(f"key (shown once; give it to the POS system, as Authorization: Bearer <key>):\n  {key}")
            print(f"line for the keys file (SW_POS_KEYS_FILE), under `keys:`:\n  {file_line(key, args.name, args.store or [])}")
        elif args.command == "demo":
            from devplatform.demo import report, run_demo

            result = run_demo(_platform(args), keep_running=args.keep_running)
            return 1 if report(result) else 0
    except (LaunchError, PackageError, CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
