"""Export of trained towers to ONNX bundles (needs the `export` extra)."""
