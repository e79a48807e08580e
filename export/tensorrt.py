"""TensorRT 10 FP16 plans for a bundle's towers (only where TensorRT and a GPU exist).

Each molecule bucket gets one plan whose optimization profile spans batch 1..``max_batch``
at the bucket's fixed node and edge counts; the text plan's profile spans batch and sequence
length (1..max_batch, 1..max_length). Plans are specific to the GPU model and TensorRT version
that built them, so the manifest records both and the engine rebuilds (or falls back to ONNX
Runtime) on a mismatch rather than loading a plan that may not deserialize.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from molret.bundle import bucket_name

TEXT_PLAN = "text.fp16.plan"
DEFAULT_MAX_BATCH = 256
OPT_BATCH = 32
OPT_SEQUENCE = 128


class TensorRTUnavailable(RuntimeError):
    """TensorRT (or a CUDA GPU) is missing; the message says which and what to do instead."""


def tensorrt_module() -> Any:
    """The ``tensorrt`` package with a GPU behind it, or :class:`TensorRTUnavailable`."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TensorRTUnavailable(
            "--tensorrt needs the TensorRT 10 Python package and an NVIDIA GPU (pip install "
            "'molret[gpu]' on a CUDA machine); the ONNX bundle was not changed"
        ) from exc
    try:
        builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
    except Exception as exc:  # TensorRT raises a bare error when no CUDA device is usable
        raise TensorRTUnavailable(f"TensorRT found no usable CUDA GPU: {exc}") from exc
    if builder is None:
        raise TensorRTUnavailable("TensorRT found no usable CUDA GPU")
    return trt


def molecule_plan_name(bucket: tuple[int, int]) -> str:
    return f"molecule-{bucket_name(*bucket)}.fp16.plan"


def _profile_shapes(
    static_shape: Sequence[int], dynamic: dict[int, tuple[int, int, int]]
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(min, opt, max) shapes: dynamic axes from ``dynamic``, the rest from the graph."""
    lo, opt, hi = (list(static_shape) for _ in range(3))
    for axis, (a, b, c) in dynamic.items():
        lo[axis], opt[axis], hi[axis] = a, b, c
    return tuple(lo), tuple(opt), tuple(hi)


def build_plan(
    trt: Any,
    onnx_path: Path,
    plan_path: Path,
    dynamic: dict[int, tuple[int, int, int]],
    workspace_bytes: int = 1 << 30,
) -> None:
    """Parse ONNX, add one optimization profile, build an FP16 plan, write it.

    ``dynamic`` maps an axis to its (min, opt, max) extent; it applies to every input (all
    inputs of a tower share the batch axis, and the text inputs the sequence axis too).
    """
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        profile.set_shape(tensor.name, *_profile_shapes(tuple(tensor.shape), dynamic))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build a plan for {onnx_path.name}")
    plan_path.write_bytes(bytes(serialized))


def build_plans(
    bundle_dir: Path,
    buckets: Sequence[tuple[int, int]],
    text_max_length: int,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> dict[str, Any]:
    """Build every plan into ``bundle_dir``; returns the manifest's ``tensorrt`` section."""
    trt = tensorrt_module()
    text_axes = {0: (1, OPT_BATCH, max_batch), 1: (1, OPT_SEQUENCE, text_max_length)}
    build_plan(trt, bundle_dir / "text.onnx", bundle_dir / TEXT_PLAN, text_axes)
    plans = {"text": TEXT_PLAN}
    for bucket in buckets:
        name = molecule_plan_name(bucket)
        build_plan(
            trt,
            bundle_dir / f"molecule-{bucket_name(*bucket)}.onnx",
            bundle_dir / name,
            {0: (1, OPT_BATCH, max_batch)},
        )
        plans[bucket_name(*bucket)] = name
    return {
        "precision": "fp16",
        "tensorrt_version": str(trt.__version__),
        "max_batch": max_batch,
        "plans": plans,
    }
