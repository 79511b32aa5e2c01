"""Per-site logs: every record carries its site name, and each site's records go to its own file."""

from __future__ import annotations

import logging
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import IO

from .context import current

FORMAT = "%(asctime)s %(levelname)s [%(site)s] %(name)s: %(message)s"
LOG_FILE = "log.txt"


class SiteFilter(logging.Filter):
    """Adds ``record.site``: the site the logging code runs on (outside any job: ``default``, e.g.
    the name of the process's own site, or "-")."""

    def __init__(self, default: str = "-"):
        super().__init__()
        self.default = default

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "site"):
            ctx = current(required=False)
            record.site = ctx.site_name if ctx is not None else self.default
        return True


class SiteFileHandler(logging.Handler):
    """Writes each record to ``<workspace>/<site>/log.txt``; records from outside any site go to
    ``default_site``'s file. Keeps at most ``max_open`` files open (1000 simulated sites are fine)."""

    def __init__(self, workspace: Path, default_site: str, level: int = logging.INFO, max_open: int = 64):
        super().__init__(level)
        self.workspace = workspace
        self.default_site = default_site
        self.max_open = max_open
        self._files: OrderedDict[str, IO[str]] = OrderedDict()
        self.paths: dict[str, Path] = {}
        self.addFilter(SiteFilter())
        self.setFormatter(logging.Formatter(FORMAT))

    def path_for(self, site: str) -> Path:
        return self.workspace / site / LOG_FILE

    def emit(self, record: logging.LogRecord) -> None:
        try:
            site = record.site if record.site != "-" else self.default_site  # type: ignore[attr-defined]
            text = self.format(record)
            with self.lock:  # type: ignore[union-attr]
                f = self._files.get(site)
                if f is None:
                    path = self.path_for(site)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    f = open(path, "a", encoding="utf-8")  # noqa: SIM115
                    self._files[site] = f
                    self.paths[site] = path
                    if len(self._files) > self.max_open:
                        self._files.popitem(last=False)[1].close()
                else:
                    self._files.move_to_end(site)
                f.write(text + "\n")
                f.flush()
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            for f in self._files.values():
                f.close()
            self._files.clear()
        super().close()


class capture_site_logs:
    """Route log records into per-site files for the duration of a ``with`` block.

    If the root logger's level is above ``level`` it is lowered for the block so that INFO records
    reach the site files; existing root handlers are raised to the old level meanwhile, so the
    console shows exactly what it showed before.
    """

    def __init__(self, workspace: Path, default_site: str, level: int = logging.INFO):
        self.handler = SiteFileHandler(workspace, default_site, level)
        self._old_level: int | None = None
        self._console: logging.Handler | None = None

    def __enter__(self) -> SiteFileHandler:
        root = logging.getLogger()
        self._raised: list[tuple[logging.Handler, int]] = []
        if not root.handlers:
            # Python's last-resort handler stops printing once any handler exists: keep warnings
            # on the console with one of the same level, tagged with the site.
            self._console = logging.StreamHandler()
            self._console.setLevel(logging.WARNING)
            self._console.addFilter(SiteFilter())
            self._console.setFormatter(logging.Formatter("%(levelname)s [%(site)s] %(name)s: %(message)s"))
            root.addHandler(self._console)
        if root.level > self.handler.level:
            # Let INFO records reach the site files without changing what existing handlers show.
            self._old_level = root.level
            for h in root.handlers:
                if h.level < root.level:
                    self._raised.append((h, h.level))
                    h.setLevel(root.level)
            root.setLevel(self.handler.level)
        root.addHandler(self.handler)
        return self.handler

    def __exit__(self, *exc: object) -> None:
        root = logging.getLogger()
        root.removeHandler(self.handler)
        if self._console is not None:
            root.removeHandler(self._console)
        if self._old_level is not None:
            root.setLevel(self._old_level)
        for h, level in self._raised:
            h.setLevel(level)
        self.handler.close()


PRINT_LOGGER = "collab.print"
_print_log = logging.getLogger(PRINT_LOGGER)
_logging_a_line = threading.local()


class _SiteLines:
    """A stand-in for sys.stdout / sys.stderr while a job runs: what a site writes is cut into whole
    lines (per site and thread, so two sites' prints never merge into one line), each written to the
    real stream in one piece -- with ``[site]`` in front for client sites -- and logged to the site's
    log (logger ``collab.print``). Writes from outside any job pass straight through."""

    def __init__(self, stream: IO[str], server_name: str | None, prefix_sites: bool = True,
                 on_line: Callable[[str, str], None] | None = None):
        self._on_line = on_line
        self._stream = stream
        self._server = server_name
        self._prefix = prefix_sites
        self._buffers: dict[tuple[str, int], str] = {}
        self._lock = threading.Lock()

    def __getattr__(self, name: str):  # encoding, isatty, fileno, ...
        return getattr(self._stream, name)

    def write(self, text: str) -> int:
        ctx = current(required=False)
        if ctx is None or getattr(_logging_a_line, "on", False):
            return self._stream.write(text)
        key = (ctx.site_name, threading.get_ident())
        if "\r" in text:
            # a live progress bar (tqdm and the like) redraws its line: let it through as it is
            with self._lock:
                pending = self._buffers.pop(key, "")
                try:
                    self._stream.write(pending + text)
                except (OSError, ValueError):
                    pass
            return len(text)
        with self._lock:
            pending = self._buffers.pop(key, "") + text
            *lines, rest = pending.split("\n")
            if rest:
                self._buffers[key] = rest
        for line in lines:
            self._line(ctx.site_name, line)
        return len(text)

    def _line(self, site: str, line: str) -> None:
        shown = line if not self._prefix or site == self._server else f"[{site}] {line}"
        with self._lock:
            try:
                self._stream.write(shown + "\n")
                self._stream.flush()
            except (OSError, ValueError):
                pass  # a closed or broken console must not fail the site's call
        _logging_a_line.on = True  # a handler that writes to this stream must not come back here
        try:
            _print_log.info("%s", line, extra={"site": site})
            if self._on_line is not None:
                self._on_line(site, line)
        except Exception:
            pass  # passing a line on must never fail the site's code
        finally:
            _logging_a_line.on = False

    def flush(self) -> None:
        try:
            self._stream.flush()
        except (OSError, ValueError):
            pass

    def drain(self) -> None:
        """Write out what was printed without a final newline."""
        with self._lock:
            pending, self._buffers = self._buffers, {}
        for (site, _), rest in pending.items():
            self._line(site, rest)


class site_prints:
    """While a job runs in this process, sites' ``print()`` output reaches the console as whole
    lines and the site's log (see :class:`_SiteLines`)."""

    def __init__(self, server_name: str | None = "server", prefix_sites: bool = True,
                 on_line: Callable[[str, str], None] | None = None):
        self.server_name = server_name
        self.prefix_sites = prefix_sites
        self.on_line = on_line
        self._installed: list[tuple[str, _SiteLines]] = []

    def __enter__(self) -> site_prints:
        for name in ("stdout", "stderr"):
            stream = getattr(sys, name)
            if stream is None or isinstance(stream, _SiteLines):
                continue
            wrapper = _SiteLines(stream, self.server_name, self.prefix_sites, self.on_line)
            setattr(sys, name, wrapper)
            self._installed.append((name, wrapper))
        return self

    def __exit__(self, *exc: object) -> None:
        for name, wrapper in reversed(self._installed):
            wrapper.drain()
            if getattr(sys, name) is wrapper:
                setattr(sys, name, wrapper._stream)
        self._installed.clear()


def get_obj_logger(obj: object) -> logging.Logger:
    """A logger named after ``obj``'s class (``<module>.<class>``), as NVFlare's
    ``nvflare.fuel.utils.log_utils.get_obj_logger``; its lines reach the site's log like any other."""
    cls = type(obj)
    return logging.getLogger(f"{cls.__module__}.{cls.__qualname__}")
