"""The chain a chaos run plays: N copies of the sample store, and the notifier's routing for it.

Each store has two tills. Till 1 is watched by a camera playing the sample clip (a cashier, customers
coming and going): the perception load, sales, and the POS-only frauds (post-voids, refunds to an
employee's own card). Till 2 is watched by a camera playing the empty-store clip: nobody is ever at
that counter, so every refund rung up there must raise `refund_without_customer`, through ingest,
inference, the correlator and the notifier. Cameras beyond two play the sample clip too (load only).
The first store also has an aisle camera served over HTTP (MJPEG) by a process of the run's own, so
a camera can drop and come back like a real one. The stores never close (no after-hours alerts).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from devplatform.launcher import ROOT

SAMPLE_CONFIG = ROOT / "config" / "sample-store.yaml"
EMPTY_REGISTER = "reg-2"
CLIP_REGISTER = "reg-1"
# An employee of every store and the card they refund to (a salted hash, as the POS sends it).
EMPLOYEE = "emp-chaos-1"
EMPLOYEE_CARD = "tok-chaos-own-card"


def store_id(index: int) -> str:
    return f"chaos-{index + 1:03d}"


def write_chain(out: Path, sample_dir: Path, stores: int, cameras: int, mjpeg_url: str | None) -> Path:
    """Write the chain's store config to `out` and return it."""
    sample = yaml.safe_load(SAMPLE_CONFIG.read_text())
    template = sample["stores"][0]
    counter = template["cameras"][0]
    chain: dict[str, Any] = {"chain": "chaos-chain", "stores": [], "employees": [{"id": EMPLOYEE, "tokens": [EMPLOYEE_CARD]}]}
    for index in range(stores):
        sid = store_id(index)
        clip = copy.deepcopy(counter)
        clip.update(id=f"{sid}-cam-1", source=f"file:{sample_dir / 'counter.mp4'}")
        empty = copy.deepcopy(counter)
        empty.update(id=f"{sid}-cam-2", source=f"file:{sample_dir / 'counter-empty.mp4'}")
        # The empty counter's own zone ids (zone ids are per camera, but distinct names read better).
        for zone in empty["zones"]:
            zone["id"] = zone["id"].replace("counter-1", "counter-2")
        extra = []
        for number in range(3, cameras + 1):
            camera = copy.deepcopy(counter)
            camera.update(id=f"{sid}-cam-{number}", source=f"file:{sample_dir / 'counter.mp4'}")
            extra.append(camera)
        if index == 0 and mjpeg_url:
            aisle = {"id": f"{sid}-cam-aisle", "source": mjpeg_url, "fps": 2, "width": 320, "height": 240,
                     "stages": [{"kind": "detector", "model": "detector", "min_score": 0.4, "detect_fps": 2}],
                     "zones": [{"id": "aisle-1", "kind": "aisle", "polygon": [[0, 0], [1, 0], [1, 1], [0, 1]]}]}
            extra.append(aisle)
        chain["stores"].append({
            "id": sid,
            "name": f"Chaos store {index + 1}",
            "region": template.get("region", "uk-south"),
            "timezone": template["timezone"],
            "cameras": [clip, empty, *extra],
            "registers": [
                {"id": CLIP_REGISTER, "camera": clip["id"], "customer_zones": ["counter-1-customer"]},
                {"id": EMPTY_REGISTER, "camera": empty["id"], "customer_zones": ["counter-2-customer"]},
            ],
        })
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(chain, sort_keys=False))
    return out

