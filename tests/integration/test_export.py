"""Export: a real trained (tiny) run -> ONNX bundle, checked against PyTorch and for damage."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import real_data_dir

from molret.bundle import MANIFEST_NAME, BundleError, load_bundle, write_manifest
from molret.engine.runtime import BundleEmbedder
from molret.featurize import ATOM_FEATURE_SIZES, BOND_FEATURE_SIZES

pytestmark = pytest.mark.slow

# Every op in the ONNX operator list of TensorRT 10 (onnx-tensorrt docs/operators.md) that a
# molret tower may contain; anything outside this set would fail or fall back in TensorRT.
TENSORRT10_OPS = {
    "Add", "And", "BatchNormalization", "Cast", "Clip", "Concat", "Constant", "ConstantOfShape",
    "Div", "Equal", "Erf", "Exp", "Expand", "Flatten", "Gather", "GatherElements", "Gemm",
    "Greater", "GreaterOrEqual", "Identity", "IsNaN", "LayerNormalization", "Less", "MatMul",
    "Max", "Min", "Mod", "Mul", "Neg", "Not", "Or", "Pow", "Range", "ReduceL2", "ReduceMax",
    "ReduceMean", "ReduceSum", "Relu", "Reshape", "Shape", "Slice", "Softmax", "Sqrt", "Squeeze",
    "Sub", "Tanh", "Transpose", "Unsqueeze", "Where",
}  # fmt: skip
SCATTER_OPS = {"ScatterND", "ScatterElements", "Scatter", "GatherND"}


def copy_bundle(bundle: Path, tmp_path: Path) -> Path:
    target = tmp_path / "bundle"
    shutil.copytree(bundle, target)
    return target


# --------------------------------------------------------------------------------------------
# What TensorRT and ONNX Runtime consume


def test_molecule_graphs_have_static_shapes_per_bucket(smoke_bundle: Path) -> None:
    from molret.featurize import MOLECULE_KEYS, N_MOLECULE_KEYS

    bundle = load_bundle(smoke_bundle)
    assert bundle.takes_molecule_keys  # smoke.yaml has them, as cpu-fast does
    widths = {"atom_features": len(ATOM_FEATURE_SIZES), "bond_features": len(BOND_FEATURE_SIZES)}
    for max_nodes, max_edges in bundle.buckets:
        model = onnx.load(str(bundle.molecule_onnx((max_nodes, max_edges))))
        assert [t.name for t in model.graph.input] == list(bundle.molecule_inputs)
        for tensor in model.graph.input:
            dims = tensor.type.tensor_type.shape.dim
            assert dims[0].dim_param == "batch", tensor.name
            static = [d.dim_value for d in dims[1:]]
            if tensor.name == MOLECULE_KEYS:
                assert static == [N_MOLECULE_KEYS], static
                continue
            axis = max_nodes if tensor.name.startswith("atom") else max_edges
            expected = [axis] + ([widths[tensor.name]] if tensor.name in widths else [])
            assert static == expected, (tensor.name, static)
        (output,) = model.graph.output
        assert output.type.tensor_type.shape.dim[1].dim_value == bundle.embedding_dim


def test_graphs_use_only_tensorrt10_ops_and_no_scatter(smoke_bundle: Path) -> None:
    bundle = load_bundle(smoke_bundle)
    paths = [bundle.text_onnx] + [bundle.molecule_onnx(b) for b in bundle.buckets]
    for path in paths:
        ops = {node.op_type for node in onnx.load(str(path)).graph.node}
        assert not ops & SCATTER_OPS, (path.name, ops & SCATTER_OPS)
        assert ops <= TENSORRT10_OPS, (path.name, ops - TENSORRT10_OPS)


def test_any_batch_size_runs(smoke_bundle: Path) -> None:
    """The exported graphs carry no traced batch size (a past bug: MHA reshapes baked it in)."""
    embedder = BundleEmbedder(load_bundle(smoke_bundle), max_batch=64)
    for n in (1, 3, 70):
        texts = [f"A molecule number {i} with a carboxylic acid group." for i in range(n)]
        assert embedder.embed_texts(texts).vectors.shape == (n, embedder.dim)
        smiles = ["C" * (1 + i % 40) for i in range(n)]
        result = embedder.embed_smiles(smiles)
        assert result.vectors.shape == (n, embedder.dim) and not result.errors


# --------------------------------------------------------------------------------------------
# Parity and metrics


def test_parity_recorded_in_manifest(smoke_bundle: Path) -> None:
    parity = load_bundle(smoke_bundle).manifest["parity"]["fp32"]
    assert parity["min_cosine_text"] >= 0.9999
    assert parity["min_cosine_molecule"] >= 0.9999


@pytest.mark.data
def test_parity_on_500_real_molecules_and_texts(smoke_run: Path, smoke_bundle: Path) -> None:
    data = real_data_dir()
    if data is None:
        pytest.skip("ChEBI-20 not found at MOLRET_DATA or ../shared/data/chebi20")
    from molret.export.parity import check_parity, parity_inputs
    from molret.trainer.run_eval import load_run

    texts, smiles = parity_inputs(data, 520)
    report = check_parity(load_run(smoke_run, True), load_bundle(smoke_bundle), texts, smiles)
    assert report.n_texts >= 500 and report.n_molecules >= 500
    assert report.min_cosine_text >= 0.9999, report
    assert report.min_cosine_molecule >= 0.9999, report


def test_bundle_metrics_equal_checkpoint_metrics(
    smoke_run: Path, smoke_bundle: Path, shared_cache: Path
) -> None:
    from molret.evaluation import evaluate_pairs
    from molret.trainer.run_eval import evaluate_run

    data = smoke_run.parent / "data"
    args = (data / "validation.txt", data / "train.txt")
    run_metrics = evaluate_run(smoke_run, *args, cache_dir=shared_cache)
    bundle_metrics = evaluate_pairs(BundleEmbedder(load_bundle(smoke_bundle)), *args)
    for direction in ("text_to_molecule", "molecule_to_text"):
        for key in ("hits@1", "hits@10", "mrr"):
            got, want = bundle_metrics[direction][key], run_metrics[direction][key]
            assert abs(got - want) <= 0.001, (direction, key, got, want)


def test_eval_on_bundle_needs_no_torch(smoke_bundle: Path) -> None:
    """`molret eval --model BUNDLE` in a process where importing torch fails."""
    data = Path(load_bundle(smoke_bundle).manifest["source"]["run_dir"]).parent / "data"
    code = (
        "import sys; sys.modules['torch'] = None; from molret.cli import main; "
        f"sys.argv = ['molret', 'eval', '--model', {str(smoke_bundle)!r}, "
        f"'--pairs', {str(data / 'validation.txt')!r}, '--json']; main()"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["n_queries"] == 9
    assert "torch" not in out.stderr


# --------------------------------------------------------------------------------------------
# Damaged bundles are refused with a precise message


def test_flipped_byte_is_refused(smoke_bundle: Path, tmp_path: Path) -> None:
    bundle = copy_bundle(smoke_bundle, tmp_path)
    target = bundle / "molecule-32x80.onnx"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"molecule-32x80\.onnx does not match its sha256"):
        load_bundle(bundle)


def test_missing_file_is_refused(smoke_bundle: Path, tmp_path: Path) -> None:
    bundle = copy_bundle(smoke_bundle, tmp_path)
    (bundle / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match=r"missing tokenizer\.json"):
        load_bundle(bundle)


def test_missing_manifest_is_refused(smoke_bundle: Path, tmp_path: Path) -> None:
    bundle = copy_bundle(smoke_bundle, tmp_path)
    (bundle / MANIFEST_NAME).unlink()
    with pytest.raises(BundleError, match="has no manifest.json"):
        load_bundle(bundle)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("format_version", 99, "format version 99"),
        ("feature_vocab_version", "1", "molecule features version '1'"),
        ("precision", "int4", "unknown precision"),
        ("inputs", ["atom_features", "charges"], "molecule inputs"),
    ],
)
def test_wrong_versions_are_refused(
    smoke_bundle: Path, tmp_path: Path, field: str, value: object, message: str
) -> None:
    bundle = copy_bundle(smoke_bundle, tmp_path)
    manifest = json.loads((bundle / MANIFEST_NAME).read_text())
    if field in ("feature_vocab_version", "inputs"):
        manifest["molecule"][field] = value
    else:
        manifest[field] = value
    (bundle / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle)


def test_unlisted_replacement_file_is_refused(smoke_bundle: Path, tmp_path: Path) -> None:
    """Rewriting a checksum without the other files changes the bundle id: refused."""
    bundle = copy_bundle(smoke_bundle, tmp_path)
    manifest = json.loads((bundle / MANIFEST_NAME).read_text())
    manifest["files"]["text.onnx"] = "0" * 64
    (bundle / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="text.onnx does not match"):
        load_bundle(bundle)
    with pytest.raises(BundleError, match="bundle_id does not match"):
        load_bundle(bundle, verify=False)


def test_rewritten_manifest_round_trips(smoke_bundle: Path, tmp_path: Path) -> None:
    bundle = copy_bundle(smoke_bundle, tmp_path)
    manifest = json.loads((bundle / MANIFEST_NAME).read_text())
    for key in ("files", "bundle_id", "format", "format_version"):
        manifest.pop(key)
    write_manifest(bundle, manifest)
    assert load_bundle(bundle).bundle_id == load_bundle(smoke_bundle).bundle_id


# --------------------------------------------------------------------------------------------
# Over-size molecules: a per-item error, never a wrong embedding


def test_oversize_molecule_is_a_per_item_error(smoke_bundle: Path) -> None:
    embedder = BundleEmbedder(load_bundle(smoke_bundle))
    largest = max(embedder.buckets)
    huge = "C" * (largest[0] + 1)
    result = embedder.embed_smiles(["CCO", huge, "not-a-smiles", "c1ccccc1"])
    assert result.indices == [0, 3]
    reasons = {e.index: e.reason for e in result.errors}
    assert set(reasons) == {1, 2}
    assert f"{largest[0] + 1} atoms" in reasons[1] and "largest bucket" in reasons[1]
    assert "unparsable" in reasons[2] or "SMILES" in reasons[2]
    assert np.allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-5)


def test_empty_text_is_a_per_item_error(smoke_bundle: Path) -> None:
    embedder = BundleEmbedder(load_bundle(smoke_bundle))
    result = embedder.embed_texts(["A small alcohol.", "   ", "An aromatic ring."])
    assert result.indices == [0, 2]
    assert [(e.index, e.reason) for e in result.errors] == [(1, "empty text")]


# --------------------------------------------------------------------------------------------
# Precisions and TensorRT


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_lower_precision_bundles(smoke_run: Path, tmp_path: Path, precision: str) -> None:
    from molret.export.bundle_export import ExportOptions, export_bundle

    out = tmp_path / precision
    manifest = export_bundle(
        smoke_run, out, ExportOptions(precision=precision, data_dir=smoke_run.parent / "data")
    )
    assert manifest["precision"] == precision
    report = manifest["parity"][precision]
    # A tiny untrained model has no accuracy to lose; this checks the pipeline and records
    # the cost. The real cost is measured on the trained model in benchmarks/export_precision.py.
    assert report["min_cosine_molecule"] > 0.95 and report["min_cosine_text"] > 0.9
    vectors = BundleEmbedder(load_bundle(out)).embed_smiles(["CCO", "c1ccccc1O"]).vectors
    assert vectors.shape == (2, manifest["embedding_dim"])


def test_export_refuses_to_overwrite(smoke_run: Path, smoke_bundle: Path) -> None:
    from molret.export.bundle_export import ExportOptions, export_bundle

    with pytest.raises(FileExistsError, match="--overwrite"):
        export_bundle(smoke_run, smoke_bundle, ExportOptions())


def test_tensorrt_flag_without_tensorrt_is_a_clear_error(smoke_run: Path, tmp_path: Path) -> None:
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed: the build itself is tested in test_tensorrt.py")
    except ImportError:
        pass
    out = subprocess.run(
        [sys.executable, "-m", "molret.cli", "export", "--model", str(smoke_run),
         "--out", str(tmp_path / "b"), "--tensorrt"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 3
    assert "TensorRT 10 Python package" in out.stderr
    assert not (tmp_path / "b").exists()


# --------------------------------------------------------------------------------------------
# The molecule tower's two input layouts (with and without MACCS keys)


@pytest.mark.parametrize("maccs_keys", [False, True])
def test_molecule_tower_inputs_with_and_without_keys(tmp_path: Path, maccs_keys: bool) -> None:
    """Exported with its model's input layout, fed by the engine's ``molecule_feeds`` from
    featurized molecules, and equal to PyTorch; a bundle from before the ``inputs`` field
    reads as the plain graph arrays."""
    import onnxruntime as ort
    import torch

    from molret.bundle import Bundle
    from molret.engine.runtime import molecule_feeds
    from molret.export.onnx_export import export_molecule_tower
    from molret.featurize import GRAPH_ARRAYS, MOLECULE_KEYS, featurize, pad_graphs
    from molret.trainer.config import ModelConfig
    from molret.trainer.model import DualEncoder, PackedGraphs

    torch.manual_seed(0)
    config = ModelConfig(
        embed_dim=16, graph_hidden=16, graph_layers=2, num_memories=3, dropout=0.0,
        fingerprint_branch=True, maccs_keys=maccs_keys,
    )  # fmt: skip
    model = DualEncoder(config, text_hidden=8).eval()
    path = tmp_path / "molecule.onnx"
    export_molecule_tower(model, (32, 64), path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    assert names == [*GRAPH_ARRAYS, *([MOLECULE_KEYS] if maccs_keys else [])]

    graphs = [featurize(s, keys=maccs_keys) for s in ("CC(=O)Oc1ccccc1C(=O)O", "c1ccncc1", "CCO")]
    (onnx_out,) = session.run(None, molecule_feeds(pad_graphs(graphs, 32, 64), names))
    with torch.no_grad():
        torch_out = model.encode_molecule(PackedGraphs.from_graphs(graphs)).embedding.numpy()
    np.testing.assert_allclose(onnx_out, torch_out, rtol=1e-4, atol=1e-5)

    if maccs_keys:
        plain = [featurize("CCO")]
        with pytest.raises(ValueError, match="keys=True"):
            molecule_feeds(pad_graphs(plain, 32, 64), names)
        with pytest.raises(ValueError, match="keys=True"), torch.no_grad():
            model.encode_molecule(PackedGraphs.from_graphs(plain))
    old = Bundle(tmp_path, {"molecule": {"buckets": [[32, 64]]}})
    assert old.molecule_inputs == GRAPH_ARRAYS and not old.takes_molecule_keys
