"""The console while a job runs: where it runs, its group calls, its rounds and how it ended.

Every environment reports through one :class:`Progress` per job, kept in the job's runtime (so
the code that runs ``@collab.main`` reports, in whatever process that is). Lines go to the logger
``collab.progress`` at INFO: they land in the server's log file like any record, and
:func:`console` shows them on the terminal for the duration of a run.

Levels (``SimEnv(progress=...)``, ``PocEnv(progress=...)``, ``ProdEnv(progress=...)``,
``collab run --quiet / --verbose``, or ``COLLAB_PROGRESS`` when the option is not given):

``"off"`` (or ``False``)
    nothing but warnings and errors.
``"normal"`` (or ``True``; the default)
    the workspace at start; completed group calls of ``main`` (method, sites ok / failed,
    seconds), at most one line per second (a call with failures always gets its line, and a
    line says how many calls it stands for); each round of the standard recipes with its
    aggregated metrics; the outcome.
``"verbose"``
    every group call, and every site's own log lines (INFO and up) on the console.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import IO, Any

from .errors import RecipeError
from .logs import PRINT_LOGGER, SiteFilter

LOGGER = "collab.progress"
LEVELS = ("off", "normal", "verbose")
#: at most one line per this many seconds for group calls that went well (level "normal")
INTERVAL = 1.0
#: at most this many lines for failed group calls per interval (a failing loop does not flood)
FAILED_LINES_PER_INTERVAL = 5

log = logging.getLogger(LOGGER)


def level_of(value: Any = None, owner: str | None = None) -> str:
    """The progress level for an env option: None reads ``$COLLAB_PROGRESS`` (default "normal").
    ``owner`` (e.g. "SimEnv") starts the error message."""
    if value is None:
        value = os.environ.get("COLLAB_PROGRESS") or "normal"
        where = "COLLAB_PROGRESS"
    else:
        where = f"{owner}: progress" if owner else "progress"
    if value is True:
        return "normal"
    if value is False:
        return "off"
    if isinstance(value, str) and value.strip().lower() in LEVELS:
        return value.strip().lower()
    raise RecipeError(f"{where} must be one of {', '.join(LEVELS)} (or True / False), got {value!r}")


def _fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.5g}"
    return str(value)


def format_metrics(metrics: Mapping[str, Any] | None) -> str:
    if not metrics:
        return ""
    return " ".join(f"{k}={_fmt_value(v)}" for k, v in metrics.items())


class Progress:
    """What one job reports. Thread-safe; cheap when nothing is printed (a clock read)."""

    def __init__(self, job_name: str, level: str = "normal", interval: float = INTERVAL,
                 logger: logging.Logger | None = None, site: str = "server",
                 on_line: Callable[[str], None] | None = None):
        self.job_name = job_name
        #: also called with every line (the server sends them to the admins following the job)
        self.on_line = on_line
        self.level = level_of(level)
        self.interval = interval
        self.logger = logger or log
        self.site = site
        self._lock = threading.Lock()
        self._last_line = float("-inf")
        self._window_failed_lines = 0
        self._skipped = 0
        self.calls = 0
        self.site_calls_ok = 0
        self.site_calls_failed = 0

    def _emit(self, message: str, *args: Any) -> None:
        if self.level == "off":
            return
        text = message % args if args else message
        self.logger.info("%s", text, extra={"site": self.site})
        if self.on_line is not None:
            try:
                self.on_line(text)
            except Exception:  # the console is not worth failing a job for
                logging.getLogger(__name__).debug("progress line not passed on", exc_info=True)

    def relay(self, text: str) -> None:
        """A line reported by the process that runs main (PocEnv, ProdEnv: the server)."""
        self._emit("%s", text)

    def site_lines(self, site: str, lines: list[str]) -> None:
        """A site's log lines, as they arrive from another process: its ``print()`` lines on stdout
        (unless "off"), every line at level "verbose"."""
        marker = f" [{site}] {PRINT_LOGGER}: "
        for line in lines:
            head, found, text = line.partition(marker)
            if found:
                self.printed(site, text)
            elif self.level == "verbose":
                self._emit("[%s] %s", site, line)

    def printed(self, site: str, line: str) -> None:
        """A ``print()`` line of a site in another process, shown as SimEnv shows it."""
        if self.level == "off":
            return
        shown = line if site == self.site else f"[{site}] {line}"
        try:
            sys.stdout.write(shown + "\n")
            sys.stdout.flush()
        except (OSError, ValueError):
            pass

    def started(self, env: str, num_clients: int | None, workspace: Any, hierarchy: str | None = None) -> None:
        """``hierarchy``: how the clients nest (``"3 top-level, 2 levels"``), when they do; the
        count is every client of every level."""
        clients = f" with {num_clients} client(s)" if num_clients else ""
        if hierarchy:
            clients += f" in a hierarchy ({hierarchy})"
        self._emit("job %s: %s%s; workspace %s", self.job_name, env, clients, workspace)

    def group_call(self, method: str, ok: int, failed: int, seconds: float,
                   failures: Mapping[str, BaseException] | None = None) -> None:
        """A group call of ``main`` completed (or gave up)."""
        with self._lock:
            self.calls += 1
            self.site_calls_ok += ok
            self.site_calls_failed += failed
            if self.level == "off":
                return
            now = time.monotonic()
            new_window = now - self._last_line >= self.interval
            if new_window:
                self._window_failed_lines = 0
            if self.level == "normal" and not new_window:
                if not failed or self._window_failed_lines >= FAILED_LINES_PER_INTERVAL:
                    self._skipped += 1
                    return
            if failed:
                self._window_failed_lines += 1
            skipped, self._skipped = self._skipped, 0
            if new_window:
                self._last_line = now
        more = f" (+{skipped} more call(s) since the last line)" if skipped else ""
        text = f"{method}(): {ok} ok"
        if failed:
            names = ", ".join(sorted(failures or {})[:5])
            text += f", {failed} failed ({names}{', ...' if failed > 5 else ''})"
        self._emit("%s in %.3f s%s", text, seconds, more)

    def round(self, round_num: int, total: int | None = None, metrics: Mapping[str, Any] | None = None,
              sites: int | None = None) -> None:
        of = f"/{total}" if total else ""
        details = [f"{sites} site(s)"] if sites is not None else []
        text = format_metrics(metrics)
        if text:
            details.append(text)
        self._emit("round %s%s%s", round_num, of, ": " + ", ".join(details) if details else "")

    def finished(self, status: str, seconds: float, error: str | None = None) -> None:
        calls = (f"; {self.calls} group call(s): {self.site_calls_ok} site call(s) ok, "
                 f"{self.site_calls_failed} failed") if self.calls else ""
        line = f"job {self.job_name} {status} in {seconds:.2f} s{calls}"
        if error and status != "finished":
            first = next((ln for ln in reversed(error.strip().splitlines()) if ln.strip()), "")
            line += f": {first.strip()}"
        self._emit("%s", line)


def of_job(job: Any) -> Progress | None:
    """The job's reporter (None when the environment set none up)."""
    extras = getattr(job, "extras", None)
    return None if extras is None else extras.get("progress")


def report_round(round_num: int, total: int | None = None, metrics: Mapping[str, Any] | None = None,
                 sites: int | None = None) -> None:
    """Show a round of your own ``main`` as the standard recipes do: ``round 3/10: 5 site(s),
    loss=0.12``. Call it from ``@collab.main``; a no-op where the environment shows no progress."""
    from .context import current

    ctx = current(required=False)
    if ctx is None:
        return
    progress = of_job(ctx.job)
    if progress is not None:
        progress.round(round_num, total, metrics, sites)


class _ConsoleHandler(logging.StreamHandler):
    """Progress lines (and, verbose, site records) on the terminal: ``collab | ...``."""

    def __init__(self, stream: IO[str], level: str):
        super().__init__(stream)
        self.setLevel(logging.INFO)
        self.addFilter(SiteFilter())
        self.setFormatter(logging.Formatter("collab | %(message)s"))
        self._site_fmt = logging.Formatter("collab | [%(site)s] %(levelname)s %(name)s: %(message)s")

    def filter(self, record: logging.LogRecord) -> bool:
        # warnings and errors already reach the console through the logging set-up
        if record.name != LOGGER and (record.levelno >= logging.WARNING or record.name == PRINT_LOGGER):
            return False  # warnings reach the console through logging, prints by themselves
        return bool(super().filter(record))

    def format(self, record: logging.LogRecord) -> str:
        if record.name == LOGGER:
            return super().format(record)
        return self._site_fmt.format(record)


def _root_prints_info() -> bool:
    """Whether the user's own logging set-up already shows INFO records of collab on a stream."""
    root = logging.getLogger()
    terminals = (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
    return any(isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) in terminals
               and h.level <= logging.INFO for h in root.handlers)


class console:
    """Show a run's progress lines on ``stream`` (default stderr) inside a ``with`` block.

    Does nothing at level "off", or when the root logger already prints INFO records to a stream
    (then the lines appear there, once)."""

    def __init__(self, level: str, stream: IO[str] | None = None):
        self.level = level_of(level)
        self.stream = stream
        self._handler: _ConsoleHandler | None = None
        self._old: int | None = None  # the target logger's level before

    def __enter__(self) -> console:
        if self.level == "off" or _root_prints_info():
            return self
        self._handler = _ConsoleHandler(self.stream or sys.stderr, self.level)
        target = logging.getLogger() if self.level == "verbose" else logging.getLogger(LOGGER)
        self._target = target
        if target.level == logging.NOTSET or target.level > logging.INFO:
            self._old = target.level
            target.setLevel(logging.INFO)
        target.addHandler(self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handler is None:
            return
        self._target.removeHandler(self._handler)
        if self._old is not None:
            self._target.setLevel(self._old)
        self._handler = None
