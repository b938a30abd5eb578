"""Limits that guard the machine against hostile or broken inputs, shared by every reader."""

from __future__ import annotations

# PIL's Image.MAX_IMAGE_PIXELS (1024 * 1024 * 1024 // 4 // 3): the ecosystem's convention. An
# 8-bit RGB image at this size decodes to 268 MB; a PNG that small on disk is a decompression bomb.
MAX_IMAGE_PIXELS = 89_478_485


def pixel_problem(width: int, height: int, limit: int, setting: str) -> str | None:
    """Why an image of ``width`` x ``height`` is refused (``setting`` says how to raise the limit), or None."""
    if width * height <= limit:
        return None
    return (
        f"is {width:,} x {height:,} pixels ({width * height / 1e6:,.0f} megapixels), over the limit of "
        f"{limit / 1e6:,.0f} megapixels; refused before decoding (a decompression bomb, or a scene: "
        f"map scenes with `eurosat map`). Raise {setting} if the image is genuine"
    )


# `eurosat serve`: what one request may bring, so that the server's memory stays bounded whatever
# arrives (each is a setting of the command). A request body, all its files together:
SERVE_UPLOAD_BYTES = 64 * 2**20
# One image for /predict, checked in its header: a patch is resized to the model's input anyway,
# and 4,096 x 4,096 decodes to 48 MB of 8-bit RGB (PIL's limit above would allow 268 MB per image).
SERVE_IMAGE_PIXELS = 4096 * 4096
# One scene for /map (16,384 tiles of 64 px); larger scenes are `eurosat map`'s.
SERVE_SCENE_PIXELS = 8192 * 8192
# Files in one /predict request: each costs a header read and a place in the batcher.
SERVE_FILES_PER_REQUEST = 64
# Pixels of one /predict request, its files' headers summed before any is decoded: 100 small PNGs of
# 4,096 x 4,096 pass the per-image limit one by one and decode to 5 GB together. Four such images.
SERVE_REQUEST_PIXELS = 4 * SERVE_IMAGE_PIXELS
# Scenes waiting for /map while one is mapped (one at a time): each holds its upload on disk and a
# connection, and a client that waits minutes behind a long queue is better told to come back.
SERVE_MAPS_WAITING = 2
