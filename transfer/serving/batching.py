"""Micro-batching: concurrent requests to one model gathered into one onnxruntime call."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np
from starlette.concurrency import run_in_threadpool

from transfer.serving.runtime import ExportedModel


@dataclass
class _Pending:
    feeds: dict[str, np.ndarray]
    rows: int
    future: asyncio.Future = field(repr=False)


class MicroBatcher:
    """Gathers concurrent requests to one model for up to ``window`` seconds (or ``max_rows`` rows)
    into one onnxruntime call; ``max_inflight`` such calls run at once."""

    def __init__(self, model: ExportedModel, window: float, max_rows: int, max_inflight: int = 2):
        self.model, self.window, self.max_rows = model, window, max_rows
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self.slots = asyncio.Semaphore(max_inflight)
        self.task: asyncio.Task | None = None
        cfg = model.preprocess_config
        self.pad_id, self.side = int(cfg.get("pad_token_id") or 0), cfg.get("padding_side", "right")
        self.calls = self.rows = 0

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
            self.task = None

    async def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        self.start()
        rows = len(next(iter(feeds.values())))
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(_Pending(feeds, rows, future))
        return await future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self.queue.get()
            batch, rows = [first], first.rows
            deadline = loop.time() + self.window
            while rows < self.max_rows:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self.queue.get(), left)
                except (asyncio.TimeoutError, TimeoutError):
                    break
                batch.append(item)
                rows += item.rows
            await self.slots.acquire()
            loop.create_task(self._run(batch))

    async def _run(self, batch: list[_Pending]) -> None:
        try:
            feeds = ExportedModel.merge([p.feeds for p in batch], self.pad_id, self.side)
            logits = await run_in_threadpool(self.model.run, feeds)
            self.calls += 1
            self.rows += len(logits)
            start = 0
            for p in batch:
                if not p.future.done():
                    p.future.set_result(logits[start:start + p.rows])
                start += p.rows
        except Exception as exc:  # pragma: no cover - the session failed: every waiter hears it
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(exc)
        finally:
            self.slots.release()
