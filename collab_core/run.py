"""``Run``: what ``recipe.execute(env)`` returns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

from .errors import CollabError


class RunFailedError(CollabError):
    """Raised by :meth:`Run.raise_for_status` when the job did not finish."""


@attrs.define
class Run:
    """The outcome of one job.

    ``status`` is ``"finished"`` (main returned), ``"failed"`` (main raised, or too few sites
    started) or ``"aborted"``. ``result`` is what ``@collab.main`` returned; ``error`` the
    traceback text when it failed; ``workspace`` the run's folder with one sub-folder per site;
    ``logs`` maps each site to its log file.
    """

    job_name: str
    status: str
    result: Any = None
    error: str | None = None
    workspace: Path | None = None
    logs: dict[str, Path] = attrs.field(factory=dict)
    env: str = ""
    duration_s: float = 0.0
    #: per tracking receiver: records written, skipped, and the failure that switched it off
    tracking: dict[str, dict[str, Any]] = attrs.field(factory=dict)

    def get_result(self) -> Any:
        """The result (the seeds' spelling)."""
        return self.result

    def get_status(self) -> str:
        return self.status

    def log(self, site: str) -> str:
        """The text of ``site``'s log."""
        try:
            path = self.logs[site]
        except KeyError:
            raise KeyError(f"no log for {site!r}; logs exist for: {', '.join(self.logs)}") from None
        return path.read_text(encoding="utf-8", errors="replace")

    def raise_for_status(self) -> Run:
        if self.status != "finished":
            raise RunFailedError(f"job {self.job_name!r} {self.status}:\n{self.error or ''}".rstrip())
        return self

    def summary(self) -> dict[str, Any]:
        return {
            "job_name": self.job_name,
            "env": self.env,
            "status": self.status,
            "duration_s": round(self.duration_s, 3),
            "workspace": str(self.workspace) if self.workspace else None,
            "result": _short(self.result),
            "error": self.error,
        }


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."
