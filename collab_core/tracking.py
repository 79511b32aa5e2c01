"""Tracking records on their way from client code to the server's receivers. Nothing is dropped.

Client code (the collab-tracking writers, ``flare.log``) calls :func:`emit`. A record is buffered
for its site and flushed to the server at the end of every call the site serves and at the end of
the job -- before the call's result leaves, so the server has a call's records when it has its
result. In a worker subprocess records go to the site process first (:func:`set_process_sink`).
On the server a :class:`TrackingHub` hands them to the receivers (TensorBoard, MLflow, W&B, ...;
plugins of kind ``tracker``), each on a thread of its own: a slow or failing receiver never blocks
training, is reported once, and the others keep working.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .context import current
from .errors import CollabCallError, PluginError

if TYPE_CHECKING:
    from .runtime import JobRuntime

log = logging.getLogger("collab.tracking")

#: The method name sites use to hand records to the server (not a valid Python name: it never
#: clashes with a user's published method).
SYSTEM_METHOD = "collab:tracking"
FLUSH_TIMEOUT = 120.0

_process_sink: Callable[[dict], None] | None = None
_warned: set[str] = set()


def set_process_sink(sink: Callable[[dict], None] | None) -> None:
    """Where records go in a process that is not a site (a worker subprocess)."""
    global _process_sink
    _process_sink = sink


def rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def emit(record: dict) -> bool:
    """Queue one record from client or server code; return False if it was not taken (outside a
    job: warned once)."""
    record.setdefault("time", time.time())
    record.setdefault("rank", rank())
    ctx = current(required=False)
    if ctx is not None and "site" not in record:
        # records of ranks other than 0 (when asked for) keep their rank in the site name
        record["site"] = ctx.site_name if not record["rank"] else f"{ctx.site_name}/rank-{record['rank']}"
    sink = _process_sink
    if sink is not None:
        sink(record)
        return True
    if ctx is None:
        if "outside" not in _warned:
            _warned.add("outside")
            log.warning("tracking records are only collected inside a collab job (in @collab functions or a "
                        "train_script); this one (%s %s) and others like it outside a job are not recorded",
                        record.get("op"), record.get("tag") or record.get("key") or "")
        return False
    buffer_for(ctx.job, ctx.site_name).add(record)
    return True


class SiteBuffer:
    """The records of one site, waiting for the next flush."""

    def __init__(self, job: JobRuntime, site: str):
        self.job = job
        self.site = site
        self.records: list[dict] = []
        self.lock = threading.Lock()
        self.sent = 0

    def add(self, record: dict) -> None:
        with self.lock:
            self.records.append(record)

    def extend(self, records: list[dict]) -> None:
        with self.lock:
            self.records.extend(records)

    def flush(self) -> None:
        with self.lock:
            records, self.records = self.records, []
        if not records:
            return
        job = self.job
        if self.site == job.server_name:
            deliver(job, records)
            self.sent += len(records)
            return
        from .runtime import Call

        call = Call(caller=self.site, target=job.server_name, method=SYSTEM_METHOD, args=(records,), kwargs={},
                    deadline=time.monotonic() + FLUSH_TIMEOUT)
        try:
            job.backend.submit(call).result(timeout=FLUSH_TIMEOUT)
            self.sent += len(records)
        except (CollabCallError, TimeoutError, OSError) as exc:
            with self.lock:
                self.records[:0] = records  # keep them for the next flush
            log.error("%s could not send %d tracking record(s) to the server (kept for the next try): %s",
                      self.site, len(records), exc)


def buffer_for(job: JobRuntime, site: str) -> SiteBuffer:
    buffers: dict[str, SiteBuffer] = job.extras.setdefault("tracking_buffers", {})
    buf = buffers.get(site)
    if buf is None:
        buf = buffers.setdefault(site, SiteBuffer(job, site))
    return buf


def flush_site(job: JobRuntime, site: str) -> None:
    """Flush ``site``'s records (a no-op when it has none): after each call and at the job's end."""
    buffers = job.extras.get("tracking_buffers")
    if buffers and site in buffers:
        buffers[site].flush()


def deliver(job: JobRuntime, records: list[dict]) -> None:
    """Server side: hand records to the job's receivers."""
    hub: TrackingHub | None = job.extras.get("tracking_hub")
    if hub is None:
        if "no-hub" not in job.extras:
            job.extras["no-hub"] = True
            log.warning("job %s received tracking records but has no tracker configured; add "
                        "tracking=['tensorboard', 'mlflow', 'wandb'] (or recipe.add_tracking(...)) to the recipe. "
                        "They are written to the server log instead.", job.job_name)
        for r in records:
            log.info("tracking %s", {k: v for k, v in r.items() if k != "values"})
        return
    hub.receive(records)


class _ReceiverThread:
    def __init__(self, name: str, receiver: Any):
        self.name = name
        self.receiver = receiver
        self.queue: queue.Queue[list[dict] | None] = queue.Queue()
        self.written = 0
        self.failed: str | None = None
        self.skipped = 0
        self.thread = threading.Thread(target=self._loop, name=f"tracker-{name}", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            batch = self.queue.get()
            if batch is None:
                return
            if self.failed:
                self.skipped += len(batch)
                continue
            try:
                self.receiver.receive(batch)
                self.written += len(batch)
            except Exception as exc:
                self.failed = f"{type(exc).__name__}: {exc}"
                self.skipped += len(batch)
                log.error("tracking receiver %r failed and is switched off for this job (the other receivers "
                          "and training go on): %s", self.name, self.failed, exc_info=True)


class TrackingHub:
    """The job's receivers on the server, each fed by a thread of its own."""

    def __init__(self, receivers: dict[str, Any]):
        self.threads = {name: _ReceiverThread(name, r) for name, r in receivers.items()}
        self.received = 0

    def receive(self, records: list[dict]) -> None:
        self.received += len(records)
        for t in self.threads.values():
            t.queue.put(records)

    def close(self, timeout: float = 60.0) -> dict[str, dict[str, Any]]:
        """Let every receiver write what it has (bounded by ``timeout`` in all), then close them;
        return what each wrote."""
        deadline = time.monotonic() + timeout
        for t in self.threads.values():
            t.queue.put(None)
        report = {}
        for name, t in self.threads.items():
            t.thread.join(max(deadline - time.monotonic(), 0.1))
            if t.thread.is_alive():
                pending = t.queue.qsize()
                log.error("tracking receiver %r did not finish writing within %g s (%d batch(es) pending); "
                          "it is abandoned", name, timeout, pending)
            else:
                try:
                    t.receiver.close()
                except Exception as exc:
                    t.failed = t.failed or f"close failed: {type(exc).__name__}: {exc}"
                    log.error("tracking receiver %r failed to close: %s", name, exc, exc_info=True)
            report[name] = {"written": t.written, "skipped": t.skipped, "failed": t.failed}
        return report


def normalize_config(tracking: Any) -> list[dict[str, Any]]:
    """``["tensorboard", ("mlflow", {...}), {"name": "wandb", "options": {...}}]`` -> a list of
    ``{"name", "options"}`` dicts, each checked against the installed trackers (``check()``)."""
    from .recipe import tracking_entries
    from .registry import get_registry

    out: list[dict[str, Any]] = []
    for entry in tracking_entries(tracking or []):
        factory = get_registry().tracker(entry["name"])
        check = getattr(factory, "check", None)
        if callable(check):
            check(**entry["options"])
        if any(e["name"] == entry["name"] for e in out):
            raise PluginError(f"tracker {entry['name']!r} is listed twice; give it once, with all its options")
        out.append(entry)
    return out


def build_hub(config: list[dict[str, Any]], workspace: Any, job_name: str) -> TrackingHub | None:
    """The receivers of a job (server side). A receiver that cannot start is reported; the others run."""
    if not config:
        return None
    from .registry import get_registry

    receivers = {}
    for entry in config:
        try:
            factory = get_registry().tracker(entry["name"])
            receivers[entry["name"]] = factory(workspace=workspace, job_name=job_name, **entry["options"])
        except Exception as exc:
            log.error("tracking receiver %r could not start and is skipped for this job: %s", entry["name"], exc,
                      exc_info=True)
    return TrackingHub(receivers)
