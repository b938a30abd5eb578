"""Command lines: ``eurosat`` (predict, map, export, compare, demo) and DVC as the demo runs it.
The top layer: it may import any room, and nothing imports it.
"""
