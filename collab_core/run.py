"""``Run``: what ``recipe.execute(env)`` returns."""

from __future__ import annotations

import uuid
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
    ``logs`` maps each site that logged something to its log file; ``log(site)`` reads one.
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
    #: every site of the run, the server first (a site that logged nothing has no entry in ``logs``)
    sites: list[str] = attrs.field(factory=list)
    #: unique per run (NVFlare's job id): the workspace folder's name where the environment named
    #: it (``<job>-<time>-<hex>``), else ``<job>-<hex>``
    job_id: str = ""

    def get_result(self, timeout: float = 0.0, clean_up: bool = True) -> Any:
        """The result (the seeds' spelling). NVFlare's ``timeout`` and ``clean_up`` are accepted for
        programs written for it: ``execute`` returns once the job ended, so there is nothing to wait
        for, and the run's workspace is kept either way (see ``collab clean``). Unlike NVFlare's,
        which returns the result folder's path, this is what ``@collab.main`` returned; the folder
        is :attr:`workspace`."""
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
            raise ValueError(f"timeout must be a number of seconds >= 0, got {timeout!r}")
        return self.result

    def get_status(self) -> str:
        return self.status

    def get_job_id(self) -> str:
        """The run's id (NVFlare's ``Run.get_job_id``), unique per run: see :attr:`job_id`."""
        return self.job_id

    def abort(self) -> None:
        """NVFlare's ``Run.abort``: a no-op here, as it is in NVFlare once the run has stopped, since
        ``execute`` returns only after the job ended."""

    def log(self, site: str) -> str:
        """The text of ``site``'s log ("" for a site of the job that logged nothing)."""
        path = self.logs.get(site)
        if path is None:
            if site in self.sites:
                return ""
            known = ", ".join(self.sites or self.logs) or "none"
            raise KeyError(f"no site {site!r} in this run; its sites are: {known}")
        try:
            return path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def __attrs_post_init__(self) -> None:
        # ``logs`` lists the files that exist; ``sites`` every site of the run
        if not self.sites:
            self.sites = list(self.logs)
        self.logs = {site: Path(p) for site, p in self.logs.items() if Path(p).is_file()}
        if not self.job_id:
            folder = Path(self.workspace).name if self.workspace is not None else ""
            named = folder.startswith(f"{self.job_name}-")
            self.job_id = folder if named else f"{self.job_name}-{uuid.uuid4().hex[:12]}"

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
