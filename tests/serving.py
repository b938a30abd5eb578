"""Helpers for the tests of ``eurosat serve``: a real uvicorn server on a free loopback port, and
image files made in memory."""

from __future__ import annotations

import contextlib
import io
import socket
import struct
import threading
import time
import warnings
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
from PIL import Image


@contextlib.contextmanager
def live_server(app: Any, timeout: float = 30.0) -> Iterator[str]:
    """``app`` served by uvicorn in a thread on 127.0.0.1 (a port the system picks); yields its URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()


def encoded(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    """``3 x H x W`` uint8 pixels as a PNG or JPEG file's bytes."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels.transpose(1, 2, 0))).save(buffer, format=fmt)
    return buffer.getvalue()


def tiff_bytes(pixels: np.ndarray) -> bytes:
    """``bands x H x W`` pixels of any type as a (non-georeferenced) TIFF file's bytes."""
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.io import MemoryFile

    bands, height, width = pixels.shape
    with warnings.catch_warnings(), MemoryFile() as memory:
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with memory.open(driver="GTiff", width=width, height=height, count=bands, dtype=pixels.dtype.name) as dst:
            dst.write(pixels)
        return memory.read()


def png_bomb(side: int = 30_000) -> bytes:
    """An 8-bit RGB PNG whose header says ``side`` x ``side`` pixels (2.7 GB decoded at 30,000) in
    under 200 bytes: the first row's data only, as a broken or hostile upload would carry."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    first_row = zlib.compress(b"\0" * (1 + 3 * side), 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", first_row) + chunk(b"IEND", b"")
