"""TensorRT plans: built and checked only where TensorRT 10 and a CUDA GPU exist.

What can be checked without TensorRT (static shapes per bucket, no scatter, only TensorRT 10
ops in the ONNX it consumes) is in test_export.py and runs everywhere.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from molret.export.tensorrt import TensorRTUnavailable, _profile_shapes, tensorrt_module


def _tensorrt_or_skip() -> None:
    try:
        tensorrt_module()
    except TensorRTUnavailable as exc:
        pytest.skip(f"TensorRT path not testable here: {exc}")


def test_profile_shapes_fill_dynamic_axes_only() -> None:
    lo, opt, hi = _profile_shapes((-1, 32, 11), {0: (1, 32, 256)})
    assert (lo, opt, hi) == ((1, 32, 11), (32, 32, 11), (256, 32, 11))
    lo, opt, hi = _profile_shapes((-1, -1), {0: (1, 32, 64), 1: (1, 128, 256)})
    assert (lo, opt, hi) == ((1, 1), (32, 128), (64, 256))


@pytest.mark.slow
def test_fp16_plans_match_onnx_runtime(smoke_run: Path, tmp_path: Path) -> None:
    _tensorrt_or_skip()
    from molret.bundle import load_bundle
    from molret.engine.runtime import BundleEmbedder
    from molret.export.bundle_export import ExportOptions, export_bundle
    from molret.metrics import cosine_rows

    out = tmp_path / "trt"
    export_bundle(smoke_run, out, ExportOptions(tensorrt=True, data_dir=smoke_run.parent / "data"))
    bundle = load_bundle(out)
    assert set(bundle.tensorrt_plans()) == {"text", *bundle.manifest["molecule"]["onnx"]}
    ort = BundleEmbedder(bundle)
    trt = BundleEmbedder(bundle, tensorrt=True)
    smiles = ["CCO", "c1ccccc1C(=O)O", "CC(=O)Oc1ccccc1C(=O)O", "C" * 60, "[Na+].[Cl-]"]
    texts = ["A small alcohol.", "An aromatic carboxylic acid.", "An acetylated salicylate."]
    assert (
        cosine_rows(ort.embed_smiles(smiles).vectors, trt.embed_smiles(smiles).vectors).min()
        >= 0.999
    )
    assert (
        cosine_rows(ort.embed_texts(texts).vectors, trt.embed_texts(texts).vectors).min() >= 0.999
    )
    assert np.isfinite(trt.embed_smiles(smiles).vectors).all()
