"""Writing results out: ONNX files checked in onnxruntime, deployment figures, and the
channel-group pictures (dot, HTML)."""
