"""Test helper: a Dask worker plugin that kills its worker process once, in the middle of a scene.

Kept out of the test module so that Dask's workers, which import it to unpickle the plugin, import
only this (not pytest's fixtures, torch or the map tests).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin


class KillMidScene(WorkerPlugin):
    """The first task any worker starts claims ``marker`` (atomically, so one kill in all); its
    worker then dies (``os._exit``, as the kernel's OOM killer would leave it) as soon as the scene's
    outputs are being written: their temporaries exist in an ``eurosat-map-*`` folder in the
    worker's own Dask folder. ``killed`` then names the scene and the process that died."""

    idempotent = True

    def __init__(self, marker: str, killed: str) -> None:
        self.marker, self.killed = marker, killed

    def setup(self, worker: Any) -> None:
        self.own = Path(worker.local_directory)

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        if finish != "executing":
            return
        try:
            handle = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(handle)
        threading.Thread(target=self._kill_while_writing, daemon=True).start()

    def _kill_while_writing(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            partial = next(self.own.glob("eurosat-map-*/.*.tif.*.tmp"), None)
            if partial is not None:
                scene = partial.name[1:].split(".tif.")[0]
                Path(self.killed).write_text(f"{scene} {os.getpid()}\n")
                os._exit(1)
            time.sleep(0.001)
