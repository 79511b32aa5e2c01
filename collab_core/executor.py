"""A thread pool that cannot starve on nested calls.

A site's published method may itself call other sites and wait (swarm learning, split learning).
With a fixed pool, N such waits exhaust the pool and the calls they wait for never run: the
deadlock NVFlare's simulator is known for. Here a worker that blocks on a collab call says so
(:func:`blocking`), and the pool may start one more thread while it waits, so the number of threads
*doing work* stays at ``max_workers`` and waiting threads never hold the pool hostage.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any

_local = threading.local()


class ElasticExecutor:
    def __init__(self, max_workers: int, name: str = "collab-worker"):
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self.max_workers = max_workers
        self.name = name
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._queue: deque[Future] = deque()
        self._tasks: dict[Future, tuple[Callable, tuple]] = {}
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._blocked = 0
        self._shutdown = False

    def submit(self, fn: Callable, *args: Any) -> Future:
        fut: Future = Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError(f"{self.name} pool is shut down")
            self._queue.append(fut)
            self._tasks[fut] = (fn, args)
            if self._idle:
                # the notifier, not the woken thread, takes it off the idle count: two submits
                # before the first woken thread runs must wake two threads
                self._idle -= 1
                self._cond.notify()
            elif len(self._threads) - self._blocked < self.max_workers:
                self._spawn()
        return fut

    def _spawn(self) -> None:
        t = threading.Thread(target=self._work, name=f"{self.name}-{len(self._threads) + 1}", daemon=True)
        self._threads.append(t)
        t.start()

    def _work(self) -> None:
        _local.executor = self
        while True:
            with self._lock:
                while not self._queue and not self._shutdown:
                    self._idle += 1
                    self._cond.wait()
                if not self._queue:  # shut down and drained
                    return
                fut = self._queue.popleft()
                task = self._tasks.pop(fut, None)
            if task is not None:  # None: a waiting caller ran it already (help)
                _execute(fut, *task)
            del fut, task

    def help(self, fut: Future) -> bool:
        """Run ``fut``'s task on the calling thread if no worker has started it; True if it ran.

        A caller about to wait for a result does the work itself instead of waiting for a
        thread to wake up: two thread hand-offs fewer per call."""
        with self._lock:
            task = self._tasks.pop(fut, None)
        if task is None:
            return False
        _execute(fut, *task)
        return True

    @contextmanager
    def _blocking(self) -> Iterator[None]:
        with self._lock:
            self._blocked += 1
            if self._queue and not self._idle:
                self._spawn()
        try:
            yield
        finally:
            with self._lock:
                self._blocked -= 1

    def shutdown(self, wait: bool = True, timeout: float | None = 10.0) -> None:
        with self._lock:
            self._shutdown = True
            for fut in self._queue:
                fut.cancel()
            self._queue.clear()
            self._tasks.clear()
            self._idle = 0
            self._cond.notify_all()
            threads = list(self._threads)
        if wait:
            me = threading.current_thread()
            for t in threads:
                if t is not me:
                    t.join(timeout)

    @property
    def thread_count(self) -> int:
        return len(self._threads)


def _execute(fut: Future, fn: Callable, args: tuple) -> None:
    if not fut.set_running_or_notify_cancel():
        return
    try:
        result = fn(*args)
    except BaseException as exc:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


@contextmanager
def blocking() -> Iterator[None]:
    """Mark the current thread as waiting on other sites; a no-op outside an ElasticExecutor."""
    executor: ElasticExecutor | None = getattr(_local, "executor", None)
    if executor is None:
        yield
    else:
        with executor._blocking():
            yield
