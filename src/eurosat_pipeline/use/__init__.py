"""Using a trained model: the inference engines (PyTorch, ONNX Runtime), ``eurosat predict`` on
image files, the ONNX export stage with its parity check, and land-use maps of whole scenes.
"""
