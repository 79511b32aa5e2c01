"""The site's log forwarder: a job's lines reach the server in order, survive a connection that
fails under them, and closing the forwarder while its thread is flushing loses nothing and raises
nothing (the forwarder thread once died with an exception when the job ended mid-flush)."""

from __future__ import annotations

import logging
import threading
import time

from collab_tcp.connection import ConnectionClosed
from collab_tcp.site import _Forwarder


class _Conn:
    def __init__(self, fail: BaseException | None = None, slow: float = 0.0):
        self.fail = fail
        self.slow = slow
        self.sent: list[str] = []

    def send(self, msg: dict) -> None:
        if self.slow:
            time.sleep(self.slow)
        if self.fail is not None:
            raise self.fail
        assert msg["t"] == "log" and msg["job"] == "job1"
        self.sent.extend(msg["lines"])


class _Agent:
    def __init__(self, conn):
        self.conn = conn


def _record(i: int) -> logging.LogRecord:
    return logging.LogRecord("user.train", logging.INFO, __file__, 1, f"line {i}", None, None)


def _messages(lines: list[str]) -> list[str]:
    return [line.rsplit(" ", 2)[-2] + " " + line.rsplit(" ", 1)[-1] for line in lines]


def test_lines_survive_a_connection_that_fails_with_any_error(tmp_path):
    agent = _Agent(_Conn(fail=OSError("broken pipe")))
    fwd = _Forwarder(agent, "job1", tmp_path / "log.txt")
    try:
        for i in range(5):
            fwd.handle(_record(i))
        fwd.flush()  # must not raise: the lines stay queued
        agent.conn = _Conn(fail=ConnectionClosed("gone"))
        fwd.handle(_record(5))
        fwd.flush()
        agent.conn = good = _Conn()
        fwd.handle(_record(6))
        fwd.flush()
        assert _messages(good.sent) == [f"line {i}" for i in range(7)]
    finally:
        fwd.close()
    text = (tmp_path / "log.txt").read_text()
    assert all(f"line {i}" in text for i in range(7))


def test_close_while_the_loop_flushes_raises_nothing_and_loses_nothing(tmp_path):
    errors: list[BaseException] = []
    old_hook = threading.excepthook
    threading.excepthook = lambda args: errors.append(args.exc_value)
    try:
        for _ in range(5):
            good = _Conn(slow=0.05)  # every send is slow, so close() lands mid-flush
            fwd = _Forwarder(_Agent(good), "job1", tmp_path / "log.txt")
            for i in range(200):
                fwd.handle(_record(i))
            time.sleep(0.3)  # the loop thread is inside a flush now
            for i in range(200, 220):
                fwd.handle(_record(i))
            fwd.close()
            fwd.handle(_record(999))  # a straggler after close: dropped from the file, no exception
            assert not fwd._thread.is_alive()
            assert _messages(good.sent)[:220] == [f"line {i}" for i in range(220)]
    finally:
        threading.excepthook = old_hook
    assert errors == []
