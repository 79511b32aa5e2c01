"""The elastic pool: no lost wake-ups, no starvation when workers wait on nested calls."""

from __future__ import annotations

import threading
import time

from collab_core.executor import ElasticExecutor, blocking


def test_back_to_back_submits_to_idle_threads_all_start():
    pool = ElasticExecutor(4)
    try:
        for _ in range(20):
            # make 3 threads idle, then submit 3 tasks that only finish when all 3 run at once
            for f in [pool.submit(time.sleep, 0) for _ in range(3)]:
                f.result(5)
            time.sleep(0.01)
            barrier = threading.Barrier(3, timeout=5)
            futs = [pool.submit(barrier.wait) for _ in range(3)]
            for f in futs:
                f.result(5)
    finally:
        pool.shutdown()


def test_blocked_workers_do_not_starve_the_pool():
    pool = ElasticExecutor(1)
    try:
        def outer(depth):
            if depth == 0:
                return 1
            inner = pool.submit(outer, depth - 1)
            with blocking():
                return 1 + inner.result(5)

        assert pool.submit(outer, 5).result(10) == 6
        assert pool.thread_count == 6
    finally:
        pool.shutdown()


def test_without_blocking_marker_a_single_worker_would_wait_forever():
    # the control for the test above: the same nesting, unmarked, cannot make progress
    pool = ElasticExecutor(1)
    try:
        inner_started = threading.Event()

        def outer():
            pool.submit(inner_started.set)
            return inner_started.wait(0.3)

        assert pool.submit(outer).result(5) is False
    finally:
        pool.shutdown()


def test_shutdown_cancels_queued_work_and_joins():
    pool = ElasticExecutor(1)
    gate = threading.Event()
    running = pool.submit(gate.wait, 5)
    queued = pool.submit(lambda: "never")
    time.sleep(0.05)
    gate.set()
    pool.shutdown(wait=True, timeout=5)
    assert running.result(1) is True
    assert queued.cancelled() or queued.result(1) == "never"
