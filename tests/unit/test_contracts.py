"""The committed generated code must match proto/: run `make proto` after editing a .proto."""

import filecmp
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _generator():
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_proto"] = module
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_current(tmp_path):
    generated = _generator().generate(tmp_path)
    committed_dir = ROOT / "services" / "shared" / "contracts"
    committed = sorted(p.name for p in committed_dir.glob("*_pb2.py"))
    assert sorted(p.name for p in generated) == committed, "a .proto was added or removed: run `make proto`"
    stale = [p.name for p in generated if not filecmp.cmp(p, committed_dir / p.name, shallow=False)]
    assert not stale, f"generated code is stale for {stale}: run `make proto` and commit the result"


def test_every_contract_is_versioned():
    for proto in (ROOT / "proto" / "shrinkwatch" / "v1").glob("*.proto"):
        assert "package shrinkwatch.v1;" in proto.read_text(), proto.name
