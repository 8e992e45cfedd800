"""The committed stubs are exactly what protoc generates from the .proto today."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ("patternstore_pb2.py", "patternstore_pb2.pyi", "patternstore_pb2_grpc.py")


def test_stubs_match_the_proto(tmp_path: Path) -> None:
    args = [
        "protoc",
        f"-I{ROOT / 'proto'}",
        f"-I{resources.files('grpc_tools') / '_proto'}",
        f"--python_out={tmp_path}",
        f"--pyi_out={tmp_path}",
        f"--grpc_python_out={tmp_path}",
        str(ROOT / "proto/patternstore/v1/patternstore.proto"),
    ]
    assert protoc.main(args) == 0
    for name in GENERATED:
        fresh = (tmp_path / "patternstore/v1" / name).read_text()
        committed = (ROOT / "client/patternstore/v1" / name).read_text()
        assert fresh == committed, f"{name} is stale: run `make proto` and commit the result"
