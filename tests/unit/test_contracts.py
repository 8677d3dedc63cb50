"""The committed generated code must match proto/: run `make proto` after editing a .proto."""

import filecmp
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_current(tmp_path):
    # A separate process: protoc's bundled libraries crash when TensorFlow is already loaded here.
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--out", str(tmp_path)], check=True, capture_output=True)
    committed_dir = ROOT / "services" / "shared" / "contracts"
    committed = sorted(p.name for pattern in ("*_pb2.py", "*_pb2.pyi") for p in committed_dir.glob(pattern))
    generated = sorted(p.name for pattern in ("*_pb2.py", "*_pb2.pyi") for p in tmp_path.glob(pattern))
    assert generated == committed, "a .proto was added or removed: run `make proto`"
    stale = [name for name in generated if not filecmp.cmp(tmp_path / name, committed_dir / name, shallow=False)]
    assert not stale, f"generated code is stale for {stale}: run `make proto` and commit the result"


def test_every_contract_is_versioned():
    for proto in (ROOT / "proto" / "shrinkwatch" / "v1").glob("*.proto"):
        assert "package shrinkwatch.v1;" in proto.read_text(), proto.name
