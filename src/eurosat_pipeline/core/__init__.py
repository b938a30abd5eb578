"""The pipeline's vocabulary, with no torch: the validated config, errors users read, atomic file
writes, band names, the EuroSAT classes, a model's data description (``DataSpec``), and the formats of the
files one stage writes for another (the train stage's records, the ONNX export's metadata).

Everything else imports from here; nothing here imports the rest of the package, so reading
``params.yaml`` or a checkpoint's metadata costs no deep-learning import.
"""
