"""Using a trained model on images: the model options as one checked value, loading a model
(verified by hash when asked), reading image files into its bands, its preprocessing and views,
the engines (PyTorch, ONNX Runtime), ``eurosat predict``, the ONNX export stage and the model
registry. ``maps`` and ``serving`` only translate their inputs into calls of this room.
"""
