"""From a trained run to an ONNX export checked against PyTorch, and the student-against-teacher latency."""
