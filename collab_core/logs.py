"""Per-site logs: every record carries its site name, and each site's records go to its own file."""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path
from typing import IO

from .context import current

FORMAT = "%(asctime)s %(levelname)s [%(site)s] %(name)s: %(message)s"
LOG_FILE = "log.txt"


class SiteFilter(logging.Filter):
    """Adds ``record.site``: the site the logging code runs on ("-" outside any job)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "site"):
            ctx = current(required=False)
            record.site = ctx.site_name if ctx is not None else "-"
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
