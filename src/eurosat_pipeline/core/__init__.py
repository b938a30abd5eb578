"""The pipeline's vocabulary, with no torch: the validated config, errors users read, atomic file
writes, band names, the EuroSAT classes and a model's data description (``DataSpec``).

Everything else imports from here; nothing here imports the rest of the package, so reading
``params.yaml`` or a checkpoint's metadata costs no deep-learning import.
"""
