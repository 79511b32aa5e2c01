"""The server's jobs: one record per submitted job, kept on disk so that the history survives a
restart of the server.

Layout of the server's workspace::

    jobs/<job id>/job/          the job folder as the admin submitted it (streamed to sites from here)
    jobs/<job id>/record.json   what the server knows of the job (status, error, participants, times)
    jobs/<job id>/result.collab the result of @collab.main, in the wire format (when it finished)
    jobs/<job id>/workspace/    the job's workspace: <site>/log.txt of every participant, the server's
                                own log, and what trackers wrote

A job that was queued, deploying or running when the server went away is marked failed ("the
server restarted ...") the next time the server starts: never shown as running.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import attrs

from collab_core import wire
from collab_core.loading import JOB_ID_RE

from .connection import Connection

log = logging.getLogger("collab.tcp.server")

RECORD_FILE = "record.json"
RESULT_FILE = "result.collab"
ACTIVE = ("queued", "deploying", "running")
ENDED = ("finished", "failed", "aborted")


@attrs.define(eq=False)
class Relay:
    """A site-to-site call in flight through the server."""

    origin: Connection  # the caller's connection
    origin_id: int  # the caller's id of the call
    target: str
    dest: Connection  # the connection the call was forwarded on: its result must come from there


@attrs.define(eq=False)
class JobRecord:
    id: str
    name: str
    folder: Path  # the job folder on disk (jobs/<id>/job)
    sites: list[str] | None
    wait_timeout: float
    deploy_timeout: float
    submitted_by: str
    status: str = "queued"
    error: str | None = None
    result: Any = None
    participants: list[str] = attrs.field(factory=list)
    joined: set[str] = attrs.field(factory=set)
    workspace: Path | None = None
    followers: set[Connection] = attrs.field(factory=set)
    ready: dict[str, Any] = attrs.field(factory=dict)
    ended: set[str] = attrs.field(factory=set)
    changed: threading.Condition = attrs.field(factory=threading.Condition)
    backend: Any = None
    call_server: Any = None
    relays: dict[int, Relay] = attrs.field(factory=dict)
    log_files: dict[str, Any] = attrs.field(factory=dict)
    submitted: float = attrs.field(factory=time.time)
    started: float = 0.0
    finished: float = 0.0
    tracking_report: dict[str, Any] = attrs.field(factory=dict)
    #: what the deploy message carries besides the files (set once the server app is built)
    deploy_info: dict[str, Any] | None = None
    #: a hierarchical job's {child: parent} (validated at submit; empty: every site is top-level)
    parents: dict[str, str] = attrs.field(factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "status": self.status, "participants": self.participants,
                "error": self.error, "submitted_by": self.submitted_by,
                "duration_s": round((self.finished or time.time()) - self.started, 3) if self.started else None}

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "status": self.status, "error": self.error,
                "participants": self.participants, "sites": self.sites, "parents": self.parents,
                "submitted_by": self.submitted_by,
                "submitted": self.submitted, "started": self.started, "finished": self.finished,
                "tracking": self.tracking_report}


class JobStore:
    """Job records on disk under ``root`` (the server's ``jobs/`` folder)."""

    def __init__(self, root: Path):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def folder(self, job_id: str) -> Path:
        if not JOB_ID_RE.fullmatch(job_id):
            raise ValueError(f"invalid job id {job_id!r}")
        return self.root / job_id

    def save(self, job: JobRecord) -> None:
        """Write the record (atomically); and the result once the job has one."""
        folder = self.folder(job.id)
        folder.mkdir(parents=True, exist_ok=True)
        if job.status == "finished" and not (folder / RESULT_FILE).exists():
            tmp = folder / (RESULT_FILE + ".tmp")
            try:
                with open(tmp, "wb") as f:
                    wire.write_frame(f, job.result)
                os.replace(tmp, folder / RESULT_FILE)
            except (OSError, wire.WireError) as exc:
                log.warning("job %s: could not save its result: %s", job.id, exc)
        tmp = folder / (RECORD_FILE + ".tmp")
        try:
            tmp.write_text(json.dumps(job.to_json(), default=str, indent=1), encoding="utf-8")
            os.replace(tmp, folder / RECORD_FILE)
        except OSError as exc:
            log.warning("job %s: could not save its record: %s", job.id, exc)

    def load_all(self) -> list[JobRecord]:
        """Every job of earlier runs of the server, oldest first. Jobs that had not ended are
        marked failed now: the server that ran them is gone."""
        jobs = []
        for folder in self.root.iterdir():
            file = folder / RECORD_FILE
            if not JOB_ID_RE.fullmatch(folder.name) or not file.is_file():
                continue
            try:
                doc = json.loads(file.read_text(encoding="utf-8"))
                job = JobRecord(
                    id=folder.name, name=str(doc.get("name", folder.name)), folder=folder / "job",
                    sites=doc.get("sites"), wait_timeout=0.0, deploy_timeout=0.0,
                    submitted_by=str(doc.get("submitted_by", "?")), status=str(doc.get("status", "failed")),
                    error=doc.get("error"), participants=list(doc.get("participants") or []),
                    workspace=folder / "workspace", submitted=float(doc.get("submitted") or 0.0),
                    started=float(doc.get("started") or 0.0), finished=float(doc.get("finished") or 0.0),
                    tracking_report=doc.get("tracking") or {},
                )
            except (OSError, ValueError, TypeError) as exc:
                log.warning("ignoring the unreadable job record %s: %s", file, exc)
                continue
            if job.status not in ENDED:
                was = job.status
                job.status = "failed"
                job.error = (f"the server restarted while the job was {was}; the job did not finish. "
                             f"Submit it again.")
                job.finished = job.finished or time.time()
                self.save(job)
            jobs.append(job)
        jobs.sort(key=lambda j: j.submitted)
        return jobs

    def result(self, job: JobRecord) -> Any:
        """The saved result of a finished job of an earlier run (None if there is none)."""
        if job.result is not None or job.status != "finished":
            return job.result
        path = self.folder(job.id) / RESULT_FILE
        try:
            with open(path, "rb") as f:
                return wire.read_frame(f)
        except (OSError, wire.WireError):
            return None
