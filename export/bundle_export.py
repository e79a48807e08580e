"""`molret export`: a training run -> a verified, self-describing bundle directory.

Order of work, so that a failure never leaves something that looks like a good bundle:
export fp32 ONNX into a temporary folder beside the target, check ONNX Runtime against PyTorch
on real inputs (parity), derive the requested precision (int8 / fp16) from the fp32 graphs,
optionally build TensorRT plans, write the manifest last (it is what makes a folder a bundle),
then rename the folder into place.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from molret.bundle import PRECISIONS, bucket_name, load_bundle, write_manifest
from molret.featurize import DEFAULT_BUCKETS, FEATURE_VOCAB_VERSION
from molret.graphs import molecule_inputs
from molret.text import tokenizer_file

from .onnx_export import export_molecule_tower, export_text_tower
from .parity import ParityReport, check_parity, parity_inputs
from .quantize import to_fp16, to_int8

log = logging.getLogger(__name__)

TEXT_ONNX = "text.onnx"
TOKENIZER = "tokenizer.json"


def molecule_onnx_name(bucket: tuple[int, int]) -> str:
    return f"molecule-{bucket_name(*bucket)}.onnx"


@dataclass(frozen=True)
class ExportOptions:
    precision: str = "fp32"
    buckets: Sequence[tuple[int, int]] = DEFAULT_BUCKETS
    tensorrt: bool = False
    parity_items: int = 512
    data_dir: Path | None = None
    overwrite: bool = False


def _run_info(run_dir: Path) -> dict[str, Any]:
    info_path = run_dir / "run.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    vocab = info.get("feature_vocab_version")
    if vocab is not None and vocab != FEATURE_VOCAB_VERSION:
        raise ValueError(
            f"run {run_dir} was trained on molecule features version {vocab!r}, but this molret "
            f"featurizes with version {FEATURE_VOCAB_VERSION!r}: retrain before exporting"
        )
    return info


def _eval_summary(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "eval.json"
    return json.loads(path.read_text()) if path.is_file() else None


def export_bundle(run_dir: Path, out: Path, options: ExportOptions) -> dict[str, Any]:
    """Write the bundle for ``run_dir`` at ``out``; returns the manifest."""
    from molret.trainer.run_eval import load_run
    from molret.trainer.text_encoder import resolve_text_encoder

    if options.precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}")
    if out.exists() and any(out.iterdir()) and not options.overwrite:
        raise FileExistsError(f"{out} exists and is not empty (pass --overwrite to replace it)")
    if options.tensorrt:  # fail before any work, not after minutes of export
        from .tensorrt import tensorrt_module

        tensorrt_module()
    info = _run_info(run_dir)
    model = load_run(run_dir, with_text_encoder=True)
    encoder_dir = resolve_text_encoder(model.config.text_encoder)
    buckets = sorted({(int(n), int(e)) for n, e in options.buckets})

    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        fp32 = work / "fp32"
        fp32.mkdir()
        assert model.text_encoder is not None
        export_text_tower(model.text_encoder, model, fp32 / TEXT_ONNX)
        for bucket in buckets:
            export_molecule_tower(model, bucket, fp32 / molecule_onnx_name(bucket))
        shutil.copy2(tokenizer_file(encoder_dir), fp32 / TOKENIZER)
        manifest = _manifest(model, info, run_dir, buckets, "fp32")
        write_manifest(fp32, manifest)

        texts, smiles = parity_inputs(options.data_dir, options.parity_items)
        parity = {"fp32": check_parity(model, load_bundle(fp32), texts, smiles).as_dict()}
        _require_parity(ParityReport.from_dict(parity["fp32"]), "fp32")

        final = fp32
        if options.precision != "fp32":
            final = work / options.precision
            shutil.copytree(fp32, final)
            (final / "manifest.json").unlink()
            convert = to_int8 if options.precision == "int8" else to_fp16
            for name in [TEXT_ONNX, *(molecule_onnx_name(b) for b in buckets)]:
                convert(fp32 / name, final / name)
            write_manifest(final, _manifest(model, info, run_dir, buckets, options.precision))
            report = check_parity(model, load_bundle(final), texts, smiles)
            parity[options.precision] = report.as_dict()
        manifest = _manifest(model, info, run_dir, buckets, options.precision)
        manifest["parity"] = parity
        if options.tensorrt:
            from .tensorrt import build_plans

            manifest["tensorrt"] = build_plans(final, buckets, model.config.text_max_length)
        write_manifest(final, manifest)
        final.chmod(0o755)  # mkdtemp made it private; a bundle is read by serving users
        if out.exists():
            shutil.rmtree(out)
        final.rename(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return load_bundle(out).manifest


def _require_parity(report: ParityReport, precision: str) -> None:
    if report.min_cosine_text < 0.9999 or report.min_cosine_molecule < 0.9999:
        raise RuntimeError(
            f"{precision} ONNX does not match PyTorch: min cosine text "
            f"{report.min_cosine_text:.6f}, molecules {report.min_cosine_molecule:.6f} "
            "(needs >= 0.9999); refusing to write the bundle"
        )


def _manifest(
    model: Any, info: dict[str, Any], run_dir: Path, buckets: list[tuple[int, int]], precision: str
) -> dict[str, Any]:
    config = model.config
    return {
        "model_name": info.get("name", run_dir.name),
        "embedding_dim": int(config.embed_dim),
        "metric": "cosine",
        "normalized": True,
        "precision": precision,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "text": {
            "onnx": TEXT_ONNX,
            "tokenizer": TOKENIZER,
            "max_length": int(config.text_max_length),
            "encoder": Path(info.get("text_encoder", "")).name or "default",
            "inputs": ["input_ids", "attention_mask"],
        },
        "molecule": {
            "onnx": {bucket_name(*b): molecule_onnx_name(b) for b in buckets},
            "buckets": [list(b) for b in buckets],
            "feature_vocab_version": FEATURE_VOCAB_VERSION,
            "oversize_policy": "error",
            "inputs": list(molecule_inputs(config.maccs_keys)),
        },
        "source": {
            "run_dir": str(run_dir.resolve()),
            "run": info,
            "eval": _eval_summary(run_dir),
        },
    }
