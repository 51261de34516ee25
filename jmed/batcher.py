"""Dynamic batching for the served model: concurrent `predict` calls become one engine call.

MLflow's scoring server (uvicorn + FastAPI) runs each request's `predict` in `asyncio.to_thread`, so
requests to one worker process arrive as concurrent threads calling the same model object; each
uvicorn worker (`--workers N`) is a separate process with its own model. A `Batcher` per process
gathers the rows of the threads that call `submit` while a batch runs (up to `max_rows`, waiting at
most `wait_s` for more), runs them as one call of `run(key, rows)` on one engine thread, and hands
each caller exactly its own rows back, in order.

Only requests with the same `key` (the served version, protocol and max_new_tokens) share a batch:
generation settings are never mixed. Input checks run in the caller's thread before `submit`, so a
bad request fails alone (HTTP 400). When an engine call of several requests fails (a prompt that
exhausts memory, say), each request is run again alone: only the one that fails by itself fails.
`close` fails whatever is still queued or running, so that no caller waits on a server shutting down.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

# Measured on the tiny model (benchmarks/serve_latency.py): a batch waits at most 2 ms for more rows;
# requests that arrive while a batch runs are gathered anyway, so the window only matters when idle.
DEFAULT_MAX_ROWS = 32
DEFAULT_WAIT_S = 0.002


@dataclass
class _Job:
    key: tuple
    rows: list
    done: threading.Event = field(default_factory=threading.Event)
    result: list | None = None
    error: BaseException | None = None


class Batcher:
    def __init__(self, run, max_rows: int = DEFAULT_MAX_ROWS, wait_s: float = DEFAULT_WAIT_S):
        if max_rows < 1 or wait_s < 0:
            raise ValueError(f"max_rows must be >= 1 and wait_s >= 0, got {max_rows} and {wait_s}")
        self.run, self.max_rows, self.wait_s = run, max_rows, wait_s
        self._cv = threading.Condition()
        self._queue: list[_Job] = []
        self._thread: threading.Thread | None = None
        self._running: list[_Job] = []
        self._closed = ""  # why submit refuses (set by close)
        self.batches = 0  # engine calls so far, and the rows they held (for tests and benchmarks)
        self.rows = 0

    def submit(self, key: tuple, rows: list) -> list:
        """Run `rows` (with settings `key`) in the next batch of the same key; blocks until done."""
        job = _Job(key, list(rows))
        with self._cv:
            if self._closed:
                raise RuntimeError(self._closed)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="jmed-batcher", daemon=True)
                self._thread.start()
            self._queue.append(job)
            self._cv.notify_all()
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    def _take(self) -> list[_Job]:
        """The oldest job and the queued jobs of its key that fit in max_rows (a job is never split);
        waits up to wait_s for more while the batch is not full. Called with the lock held."""
        while not self._queue:
            self._cv.wait()
        deadline = time.monotonic() + self.wait_s
        while True:
            while not self._queue:  # emptied by close while waiting for more
                self._cv.wait()
            key = self._queue[0].key
            batch, n = [], 0
            for job in self._queue:
                if job.key == key and (not batch or n + len(job.rows) <= self.max_rows):
                    batch.append(job)
                    n += len(job.rows)
            left = deadline - time.monotonic()
            if n >= self.max_rows or left <= 0:
                break
            self._cv.wait(left)
        for job in batch:
            self._queue.remove(job)
        return batch

    def close(self, reason: str = "the server is shutting down") -> None:
        """Fail every queued and running job with `reason`; later submits fail at once."""
        with self._cv:
            self._closed = reason
            for job in self._queue + self._running:
                job.error = RuntimeError(reason)
                job.done.set()
            self._queue.clear()
            self._cv.notify_all()

    def _run(self, key: tuple, jobs: list[_Job]) -> None:
        """One engine call for `jobs`, each handed its own rows back (or the error)."""
        rows = [r for job in jobs for r in job.rows]
        out = self.run(key, rows)
        if len(out) != len(rows):
            raise RuntimeError(f"engine returned {len(out)} rows for {len(rows)}")
        start = 0
        for job in jobs:
            job.result = out[start : start + len(job.rows)]
            start += len(job.rows)
        self.batches += 1
        self.rows += len(rows)

    def _loop(self) -> None:
        while True:
            with self._cv:
                batch = self._take()
                self._running = batch
            try:
                self._run(batch[0].key, batch)
            except BaseException as exc:  # noqa: BLE001 - handed to the callers, the loop goes on
                if len(batch) == 1:
                    batch[0].error = exc
                else:  # which request caused it? each alone: the others still get their answers
                    for job in batch:
                        try:
                            self._run(job.key, [job])
                        except BaseException as alone:  # noqa: BLE001
                            job.error = alone
            with self._cv:
                self._running = []
            for job in batch:
                job.done.set()
