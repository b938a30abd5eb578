"""From an address or a folder to batches: dataset sources (official EuroSAT, synthetic demo data,
any folder-per-class), image-file decoding with its limits, the download stage's checks and
one-time decode to ``images.npy``, the stratified split, and memory-mapped batch gathering.

No Lightning and no model here: what a stage needs to read data is importable on its own.
"""
