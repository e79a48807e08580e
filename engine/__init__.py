"""Serving: gRPC front end, batching queue, ONNX Runtime backend, USearch index. No torch."""
