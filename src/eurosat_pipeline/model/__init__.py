"""The classifier and everything that travels with it: the timm backbone and head, the input stem
for other bands, pretrained weights and their checks, the backbone's preprocessing, batched
augmentation, checkpoints (load and keys) and the inference loop shared by evaluate, predict
and the t-SNE features.
"""
