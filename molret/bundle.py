"""The bundle: a directory that carries a trained model to machines without torch.

A bundle is written once by ``molret export`` and only read afterwards (by ``molret eval``,
``molret index build`` and ``molret serve``). Its ``manifest.json`` says everything a reader
needs to produce the same embeddings the trainer measured: the embedding size and metric, the
text tower's max length and tokenizer file, the molecule tower's graph buckets and feature
vocabulary version, the precision, and the sha256 of every other file. A reader refuses a bundle
whose format version it does not know, whose feature vocabulary differs from the installed
featurizer (the model would see different inputs than in training), or whose files do not match
their checksums: a damaged model gives wrong answers silently, so it must not load at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from molret.featurize import FEATURE_VOCAB_VERSION
from molret.graphs import GRAPH_ARRAYS, MOLECULE_KEYS, molecule_inputs

BUNDLE_FORMAT = "molret-bundle"
BUNDLE_FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
PRECISIONS = ("fp32", "fp16", "int8")


class BundleError(ValueError):
    """A bundle that cannot be used; the message names the bundle and what is wrong."""


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def bucket_name(max_nodes: int, max_edges: int) -> str:
    """The key of one graph bucket in the manifest, e.g. ``"32x80"``."""
    return f"{max_nodes}x{max_edges}"


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: its folder and parsed manifest, with typed accessors."""

    root: Path
    manifest: dict[str, Any]

    @property
    def embedding_dim(self) -> int:
        return int(self.manifest["embedding_dim"])

    @property
    def precision(self) -> str:
        return str(self.manifest["precision"])

    @property
    def bundle_id(self) -> str:
        """A short stable id: the manifest's own checksum prefix (changes with any file)."""
        return str(self.manifest["bundle_id"])

    @property
    def text_max_length(self) -> int:
        return int(self.manifest["text"]["max_length"])

    @property
    def tokenizer_path(self) -> Path:
        return self.root / self.manifest["text"]["tokenizer"]

    @property
    def text_onnx(self) -> Path:
        return self.root / self.manifest["text"]["onnx"]

    @property
    def buckets(self) -> list[tuple[int, int]]:
        return [(int(n), int(e)) for n, e in self.manifest["molecule"]["buckets"]]

    @property
    def molecule_inputs(self) -> tuple[str, ...]:
        """The molecule towers' ONNX input names (bundles before the field: the graph arrays)."""
        return tuple(self.manifest["molecule"].get("inputs") or GRAPH_ARRAYS)

    @property
    def takes_molecule_keys(self) -> bool:
        """The molecule tower wants MACCS keys: featurize with ``keys=True``."""
        return MOLECULE_KEYS in self.molecule_inputs

    def molecule_onnx(self, bucket: tuple[int, int]) -> Path:
        return self.root / self.manifest["molecule"]["onnx"][bucket_name(*bucket)]

    def tensorrt_plans(self) -> dict[str, Path]:
        plans = self.manifest.get("tensorrt") or {}
        return {name: self.root / rel for name, rel in plans.get("plans", {}).items()}


def _bundle_id(files: Mapping[str, str]) -> str:
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name}\0{files[name]}\n".encode())
    return digest.hexdigest()[:16]


def write_manifest(root: str | os.PathLike[str], manifest: dict[str, Any]) -> dict[str, Any]:
    """Checksum every file under ``root`` into ``manifest["files"]`` and write it atomically.

    The manifest is written last (temp file, fsync, rename), so a bundle whose export was
    interrupted has no manifest and cannot be mistaken for a complete one.
    """
    root_path = Path(root)
    files = {
        path.relative_to(root_path).as_posix(): sha256_file(path)
        for path in sorted(root_path.rglob("*"))
        if path.is_file() and path.name != MANIFEST_NAME and not path.name.startswith(".")
    }
    complete = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_FORMAT_VERSION,
        **manifest,
        "files": files,
        "bundle_id": _bundle_id(files),
    }
    fd, tmp = tempfile.mkstemp(dir=root_path, prefix=".manifest-", suffix=".json")
    with os.fdopen(fd, "w") as handle:
        json.dump(complete, handle, indent=2, sort_keys=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; a bundle is read by other users (servers)
    os.replace(tmp, root_path / MANIFEST_NAME)
    return complete


def _require(manifest: Mapping[str, Any], keys: Iterable[str], where: str, root: Path) -> None:
    missing = [key for key in keys if key not in manifest]
    if missing:
        raise BundleError(f"bundle {root}: {where} lacks {', '.join(missing)}")


def load_bundle(root: str | os.PathLike[str], verify: bool = True) -> Bundle:
    """Read and check a bundle; ``verify=False`` skips only the (slow) file checksums."""
    root_path = Path(root)
    manifest_path = root_path / MANIFEST_NAME
    if not root_path.is_dir():
        raise BundleError(f"bundle {root_path} does not exist or is not a directory")
    if not manifest_path.is_file():
        raise BundleError(
            f"bundle {root_path} has no {MANIFEST_NAME} (not a bundle, or its export did not "
            "finish)"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"bundle {root_path}: {MANIFEST_NAME} is not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"bundle {root_path}: {MANIFEST_NAME} is not a molret bundle manifest")
    version = manifest.get("format_version")
    if version != BUNDLE_FORMAT_VERSION:
        raise BundleError(
            f"bundle {root_path} has format version {version!r}; this molret reads version "
            f"{BUNDLE_FORMAT_VERSION} (re-export the model with this molret)"
        )
    _require(
        manifest,
        ("embedding_dim", "metric", "precision", "text", "molecule", "files", "bundle_id"),
        MANIFEST_NAME,
        root_path,
    )
    _require(manifest["text"], ("onnx", "tokenizer", "max_length"), "text section", root_path)
    _require(
        manifest["molecule"],
        ("onnx", "buckets", "feature_vocab_version"),
        "molecule section",
        root_path,
    )
    vocab = manifest["molecule"]["feature_vocab_version"]
    if vocab != FEATURE_VOCAB_VERSION:
        raise BundleError(
            f"bundle {root_path} was trained on molecule features version {vocab!r} but this "
            f"molret featurizes with version {FEATURE_VOCAB_VERSION!r}; its embeddings would "
            "be wrong"
        )
    if manifest["precision"] not in PRECISIONS:
        raise BundleError(f"bundle {root_path}: unknown precision {manifest['precision']!r}")
    inputs = manifest["molecule"].get("inputs")
    known = (list(molecule_inputs(False)), list(molecule_inputs(True)))
    if inputs is not None and list(inputs) not in known:
        raise BundleError(
            f"bundle {root_path}: molecule inputs {inputs} are not ones this molret can feed "
            f"({' or '.join(str(k) for k in known)})"
        )
    bundle = Bundle(root=root_path, manifest=manifest)
    _check_files(bundle, verify)
    return bundle


def _referenced_files(bundle: Bundle) -> list[str]:
    manifest = bundle.manifest
    names = [manifest["text"]["onnx"], manifest["text"]["tokenizer"]]
    names += list(manifest["molecule"]["onnx"].values())
    names += list((manifest.get("tensorrt") or {}).get("plans", {}).values())
    return names


def _check_files(bundle: Bundle, verify: bool) -> None:
    files: dict[str, str] = bundle.manifest["files"]
    for name in _referenced_files(bundle):
        if name not in files:
            raise BundleError(f"bundle {bundle.root}: {name} is used but has no checksum")
    for name, expected in sorted(files.items()):
        path = bundle.root / name
        if not path.is_file():
            raise BundleError(f"bundle {bundle.root} is missing {name}")
        if verify and sha256_file(path) != expected:
            raise BundleError(
                f"bundle {bundle.root}: {name} does not match its sha256 in {MANIFEST_NAME} "
                "(damaged or modified; re-export or re-copy the bundle)"
            )
    if bundle.manifest["bundle_id"] != _bundle_id(files):
        raise BundleError(f"bundle {bundle.root}: bundle_id does not match the file checksums")
