"""Lower-precision copies of the fp32 towers: int8 for CPU serving, fp16 for GPUs.

INT8 is ONNX Runtime's dynamic quantization of the MatMul weights (activations are quantized
per batch at run time), which needs no calibration data and leaves the embedding tables
(Gather) and the normalisations in fp32: those are cheap and carry most of the accuracy risk.
FP16 converts every float tensor but keeps the graph's inputs and outputs in their original
types, so callers feed and read the same arrays whatever the precision.
"""

from __future__ import annotations

from pathlib import Path


def to_int8(source: Path, target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(source),
        str(target),
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul"],
        per_channel=True,
    )


def to_fp16(source: Path, target: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    onnx.save(model, str(target))
