"""The committed gRPC stubs (engine/proto) match proto/molret/v1/retrieval.proto.

The stubs are regenerated into a temporary folder with scripts/gen_proto.sh and compared file by
file. Lines that only record the generator's version are left out of the comparison, so a newer
grpcio-tools does not count as a stale proto; any change to the .proto does.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STUBS = REPO / "engine" / "proto"
FILES = ("__init__.py", "retrieval_pb2.py", "retrieval_pb2.pyi", "retrieval_pb2_grpc.py")
VERSION_MARKERS = (
    "Protobuf Python Version",
    "_runtime_version.Domain.PUBLIC",
    "GRPC_GENERATED_VERSION = ",
)


def _comparable(text: str) -> list[str]:
    return [line for line in text.splitlines() if not any(m in line for m in VERSION_MARKERS)]


def test_committed_stubs_match_the_proto(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools (dev extra) regenerates the stubs")
    if shutil.which("bash") is None:
        pytest.skip("bash is needed to run scripts/gen_proto.sh")
    out = tmp_path / "proto"
    subprocess.run(
        ["bash", str(REPO / "scripts" / "gen_proto.sh"), str(out)],
        check=True,
        capture_output=True,
        text=True,
    )
    stale = [
        name
        for name in FILES
        if _comparable((out / name).read_text()) != _comparable((STUBS / name).read_text())
    ]
    assert not stale, (
        f"engine/proto/{', '.join(stale)} differ from what proto/molret/v1/retrieval.proto "
        "generates: run `bash scripts/gen_proto.sh` and commit the result"
    )


def test_stubs_import_under_the_package() -> None:
    from molret.engine.proto import retrieval_pb2, retrieval_pb2_grpc

    assert retrieval_pb2.DESCRIPTOR.package == "molret.v1"
    assert "Retrieval" in retrieval_pb2.DESCRIPTOR.services_by_name
    assert hasattr(retrieval_pb2_grpc, "RetrievalStub")
