"""Generations off the event loop: a bounded thread pool, a bounded queue, and tokens as they come."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from app.errors import Unavailable
from app.metrics import AppMetrics
from samkv import GenerationStream

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Selection:
    """Per retrieved document, the indices of its own tokens the method kept and recomputed."""

    kept_per_document: list[list[int]]
    recomputed_per_document: list[list[int]]


class RunningGeneration:
    """One admitted generation; iterate it (async) for text pieces, read `stats` and
    `selection` afterwards.

    Stopping the iteration early (a client that went away) cancels the generation after the
    piece being decoded.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._items: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.cancelled = threading.Event()
        self.stats: dict[str, Any] | None = None
        self.selection: Selection | None = None

    def push(self, kind: str, value: Any) -> None:
        """Hand one item from the worker thread to the event loop."""
        try:
            self._loop.call_soon_threadsafe(self._items.put_nowait, (kind, value))
        except RuntimeError:  # the loop closed under us: nobody is listening any more
            self.cancelled.set()

    async def started(self) -> None:
        """Wait until the engine accepted the request; re-raises what it refused it with."""
        kind, value = await self._items.get()
        if kind == "error":
            raise value

    async def __aiter__(self) -> AsyncIterator[str]:
        try:
            while True:
                kind, value = await self._items.get()
                if kind == "token":
                    yield value
                elif kind == "done":
                    self.stats, self.selection = value
                    return
                else:
                    raise value
        finally:
            self.cancelled.set()


class GenerationPool:
    """At most `max_concurrent` generations run at once; at most `max_queued` more wait.

    The engine is CPU- (or GPU-) bound, so generations run on worker threads. A request
    beyond the queue is refused at once with `Unavailable` (503 and Retry-After) rather than
    left waiting behind work it cannot see.
    """

    def __init__(
        self, max_concurrent: int, max_queued: int, retry_after_s: int, metrics: AppMetrics
    ) -> None:
        self._executor = ThreadPoolExecutor(max_concurrent, thread_name_prefix="generation")
        self._capacity = max_concurrent + max_queued
        self._retry_after_s = retry_after_s
        self._metrics = metrics
        self._admitted = 0
        self._lock = threading.Lock()

    @property
    def admitted(self) -> int:
        """Generations running or queued now."""
        return self._admitted

    async def start(self, make_stream: Callable[[], GenerationStream]) -> RunningGeneration:
        """Admit and start one generation; returns once the engine accepted the request.

        `make_stream` runs on the worker thread (it may read caches from the store) and its
        errors are raised here, before any response is sent.
        """
        self._admit()
        running = RunningGeneration(asyncio.get_running_loop())
        try:
            self._executor.submit(self._run, make_stream, running)
        except RuntimeError:  # executor shut down: the app is stopping
            self._release()
            raise Unavailable("the server is shutting down", self._retry_after_s) from None
        try:
            await running.started()
        except BaseException:
            running.cancelled.set()
            raise
        return running

    def check_capacity(self) -> None:
        """Raise `Unavailable` now if `start` would refuse a generation at this moment.

        Lets a request that would be refused anyway skip the work before `start` (retrieval);
        `start` still decides, so a race between the two only costs that work.
        """
        with self._lock:
            if self._admitted >= self._capacity:
                self._metrics.generations_rejected.inc()
                raise self._full()

    def close(self) -> None:
        """Stop taking generations and cancel the queued ones."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _admit(self) -> None:
        with self._lock:
            if self._admitted >= self._capacity:
                self._metrics.generations_rejected.inc()
                raise self._full()
            self._admitted += 1
        self._metrics.generations_active.inc()

    def _full(self) -> Unavailable:
        return Unavailable(
            f"all {self._capacity} generation slots (running and queued) are taken; retry shortly",
            self._retry_after_s,
        )

    def _release(self) -> None:
        with self._lock:
            self._admitted -= 1
        self._metrics.generations_active.dec()

    def _run(self, make_stream: Callable[[], GenerationStream], running: RunningGeneration) -> None:
        # The whole generation runs on this one thread: the engine's inference mode is
        # thread-local, so its iterator must not hop between threads.
        final: tuple[str, Any] | None = None
        try:
            if running.cancelled.is_set():
                return
            stream = make_stream()
            running.push("started", None)
            for piece in stream:
                if running.cancelled.is_set():
                    logger.info("generation cancelled: the client went away")
                    return
                running.push("token", piece)
            assert stream.stats is not None
            self._metrics.observe_generation(stream.stats)
            selection = Selection(stream.kept_per_document, stream.recomputed_per_document)
            final = ("done", (stream.stats, selection))
        except Exception as exc:  # noqa: BLE001 - handed to the request, which maps it
            final = ("error", exc)
        finally:
            # The slot is free before the request hears the end, so a client that asks again
            # at once is never refused for its own finished generation.
            self._release()
            if final is not None:
                running.push(*final)
