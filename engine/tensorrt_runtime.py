"""Running a bundle's TensorRT plans (optional GPU path; TensorRT 10 + cuda-python).

``TensorRTSession`` has the one method of an ONNX Runtime session that ``BundleEmbedder`` uses,
``run(None, feeds) -> [embedding]``, so the engine swaps it in per tower when a bundle has plans
and ``--tensorrt`` is asked for; everything else (featurization, bucketing, batching) is shared.
Nothing here is imported unless that happens, so a CPU install never needs TensorRT.

Unmeasured: no machine available to this project has TensorRT installed (see README).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        from cuda import cudart  # older cuda-python layout
    return cudart


def _check(result: Any) -> Any:
    """cuda-python returns (error, *values); raise on an error, return the values."""
    error, *values = result if isinstance(result, tuple) else (result,)
    if int(error) != 0:
        raise RuntimeError(f"CUDA call failed with error {error}")
    return values[0] if len(values) == 1 else values


class TensorRTSession:
    """One deserialized plan with an execution context and a CUDA stream."""

    def __init__(self, plan_path: Path) -> None:
        try:
            import tensorrt as trt
        except ImportError as exc:
            raise RuntimeError(
                "TensorRT plans need the TensorRT 10 Python package (pip install 'molret[gpu]')"
            ) from exc
        self._trt = trt
        self._cudart = _cudart()
        logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(logger)
        self._engine = self._runtime.deserialize_cuda_engine(plan_path.read_bytes())
        if self._engine is None:
            raise RuntimeError(
                f"{plan_path.name} does not deserialize: it was built for another GPU or "
                "TensorRT version; re-export with --tensorrt on this machine"
            )
        self._context = self._engine.create_execution_context()
        self._stream = _check(self._cudart.cudaStreamCreate())
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self._outputs = [
            n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT
        ]

    def run(self, _output_names: object, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        cudart = self._cudart
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        allocations = []
        try:
            for name, array in feeds.items():
                host = np.ascontiguousarray(array)
                device = _check(cudart.cudaMalloc(max(host.nbytes, 1)))
                allocations.append(device)
                _check(
                    cudart.cudaMemcpyAsync(device, host.ctypes.data, host.nbytes, h2d, self._stream)
                )
                self._context.set_input_shape(name, host.shape)
                self._context.set_tensor_address(name, int(device))
            results = []
            for name in self._outputs:
                shape = tuple(self._context.get_tensor_shape(name))
                dtype = self._trt.nptype(self._engine.get_tensor_dtype(name))
                host = np.empty(shape, dtype=dtype)
                device = _check(cudart.cudaMalloc(max(host.nbytes, 1)))
                allocations.append(device)
                self._context.set_tensor_address(name, int(device))
                results.append((host, device))
            if not self._context.execute_async_v3(self._stream):
                raise RuntimeError("TensorRT execution failed")
            for host, device in results:
                _check(
                    cudart.cudaMemcpyAsync(host.ctypes.data, device, host.nbytes, d2h, self._stream)
                )
            _check(cudart.cudaStreamSynchronize(self._stream))
            return [host.astype(np.float32) for host, _ in results]
        finally:
            for device in allocations:
                cudart.cudaFree(device)
