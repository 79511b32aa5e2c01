"""Processes follow the process that started them: nothing an environment or a job starts may
outlive it, also when it dies by SIGKILL.

Two mechanisms, used together:

* A lifeline pipe (every POSIX system): the parent keeps the write end of a pipe and never writes;
  the child gets the read end (``--lifeline FD``) and watches it on a thread. When the parent dies
  for any reason the kernel closes the write end, the child reads end-of-file and stops itself
  (cleanly, then ``os._exit`` after a grace period).
* ``PR_SET_PDEATHSIG`` (Linux only) for children that are not ours to change, such as a torchrun
  agent: the kernel signals the child when the thread that started it ends. On other systems this
  is a no-op; there the lifeline pipe (and the worker's own connection to its site) does the job.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

log = logging.getLogger("collab.lifeline")

_PR_SET_PDEATHSIG = 1


def new_lifeline() -> tuple[int, int]:
    """``(read_fd, write_fd)``: pass ``read_fd`` to children (``pass_fds``), keep ``write_fd`` open
    in this process for as long as they may live. Both are close-on-exec here."""
    return os.pipe()


def watch_lifeline(fd: int, stop: Callable[[], None], grace: float = 10.0, what: str = "this process") -> None:
    """On a daemon thread: when the parent behind ``fd`` is gone, call ``stop()``, and if the process
    is still alive ``grace`` seconds later, end it with ``os._exit(1)``."""

    def watch() -> None:
        try:
            while os.read(fd, 4096):
                pass
        except OSError:
            pass
        print(f"collab: the process that started {what} is gone; stopping", file=sys.stderr, flush=True)
        try:
            stop()
        except Exception:  # stopping must not be stopped by an error
            log.exception("stopping after the parent went away failed")
        time.sleep(grace)
        os._exit(1)

    threading.Thread(target=watch, name="collab-lifeline", daemon=True).start()


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux; elsewhere a
    no-op). Safe as a ``preexec_fn``; in a child that runs it itself, check ``os.getppid()`` after."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        pass
