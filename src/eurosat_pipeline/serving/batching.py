"""Concurrent requests classified together: a small asyncio micro-batcher in front of an engine.

An engine is several times faster per image on a batch than on one image at a time (the model's
layers run as large matrix products; one call's fixed cost is shared). A server that classifies
each request on its own pays that price under load, when many small requests arrive together.
The batcher queues each request's images, and one worker takes what has queued (images of one
size and type, up to ``max_batch``), waiting at most ``max_wait`` seconds for more when fewer
are there, then runs a single ``classify`` call in a thread, so the event loop keeps accepting
requests meanwhile. Calls never overlap: the engine already uses every core for one call.
Waiting adds at most ``max_wait`` to a request alone; while the engine is busy, requests queue
anyway, so under load batches form without waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(eq=False)  # each request is itself: compared by identity, never by its pixels
class _Pending:
    images: np.ndarray
    future: asyncio.Future[np.ndarray]

    @property
    def kind(self) -> tuple[object, ...]:
        """Images of one kind can share a batch: same bands, size and value type."""
        return (*self.images.shape[1:], self.images.dtype)


class MicroBatcher:
    """``await batcher.classify(images)``: probabilities for ``N x bands x H x W`` images, computed
    with other requests' images of the same kind in one engine call. Start and stop it inside the
    event loop that serves the requests (an application's lifespan)."""

    def __init__(self, classify: Callable[[np.ndarray], np.ndarray], max_batch: int = 64, max_wait: float = 0.0):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_wait < 0:
            raise ValueError(f"max_wait must be 0 or more seconds, got {max_wait}")
        self._engine = classify
        self.max_batch = max_batch
        self.max_wait = max_wait
        self._queue: list[_Pending] = []
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        #: Engine calls made and images classified: what the batching achieved (GET /health shows it).
        self.calls = 0
        self.images = 0

    async def start(self) -> None:
        self._arrived = asyncio.Event()
        self._worker = asyncio.create_task(self._work(), name="micro-batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        for pending in self._queue:
            if not pending.future.done():
                pending.future.cancel()
        self._queue.clear()

    async def classify(self, images: np.ndarray) -> np.ndarray:
        if self._arrived is None or self._worker is None or self._worker.done():
            raise RuntimeError("the micro-batcher is not running: start() it in the serving event loop")
        pending = _Pending(images, asyncio.get_running_loop().create_future())
        self._queue.append(pending)
        self._arrived.set()
        return await pending.future

    async def _work(self) -> None:
        assert self._arrived is not None  # set by start(), before this task exists
        while True:
            await self._arrived.wait()
            batch: list[_Pending] = []
            try:
                if self.max_wait and self._queued_images() < self.max_batch:
                    await asyncio.sleep(self.max_wait)  # a moment for other requests to join
                batch = self._take_batch()
                if not self._queue:
                    self._arrived.clear()
                if batch:
                    await self._run(batch)
            except Exception as err:  # noqa: BLE001 - the loop must outlive any failure, or later requests hang
                # Where it failed, the queue may be half-taken: every request waiting gets the error.
                self._fail([*batch, *self._queue], err)
                self._queue.clear()
                self._arrived.clear()

    @staticmethod
    def _fail(requests: list[_Pending], err: Exception) -> None:
        for pending in requests:
            if not pending.future.done():
                pending.future.set_exception(err)

    def _queued_images(self) -> int:
        return sum(len(p.images) for p in self._queue)

    def _take_batch(self) -> list[_Pending]:
        """The oldest request, and the next ones of its kind while they fit in ``max_batch``; a
        request over ``max_batch`` on its own goes alone (the engine call is chunked)."""
        self._queue = [p for p in self._queue if not p.future.done()]  # a client that left
        if not self._queue:
            return []
        kind, taken, size = self._queue[0].kind, [], 0
        for pending in self._queue:
            if pending.kind == kind and (not taken or size + len(pending.images) <= self.max_batch):
                taken.append(pending)
                size += len(pending.images)
        self._queue = [p for p in self._queue if p not in taken]
        return taken

    async def _run(self, batch: list[_Pending]) -> None:
        try:
            images = np.concatenate([p.images for p in batch]) if len(batch) > 1 else batch[0].images
            probabilities = await asyncio.to_thread(self._in_chunks, images)
        except asyncio.CancelledError:  # the server stops: nobody will take these answers
            for pending in batch:
                pending.future.cancel()
            raise
        except Exception as err:  # noqa: BLE001 - the engine's failure is each waiting request's answer
            self._fail(batch, err)
            return
        start = 0
        for pending in batch:
            end = start + len(pending.images)
            if not pending.future.done():
                pending.future.set_result(probabilities[start:end])
            start = end

    def _in_chunks(self, images: np.ndarray) -> np.ndarray:
        chunks = [self._engine(images[i : i + self.max_batch]) for i in range(0, len(images), self.max_batch)]
        self.calls += len(chunks)
        self.images += len(images)
        return np.concatenate(chunks)
