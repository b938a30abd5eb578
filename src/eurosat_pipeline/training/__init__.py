"""The train stage: the Lightning module and data module, the two-phase schedule, callbacks
(history, best checkpoints, t-SNE), resuming an interrupted run, tracking (DVCLive, W&B) and
``train()``, the recipe that composes them.
"""
