"""MlflowReceiver: one parent MLflow run per job, one nested child run per site.

Everything goes through an ``mlflow.MlflowClient`` bound to an explicit tracking URI (never
MLflow's global "fluent" state, so several receivers can live in one process). The store is, in
this order: the ``tracking_uri`` option; the ``MLFLOW_TRACKING_URI`` environment variable; else
one store shared by every run on this machine, ``sqlite:///<root>/mlflow/mlflow.db`` with
artifacts (none are written today) under ``<root>/mlflow/artifacts``, where ``<root>`` is the
workspaces root (``$COLLAB_WORKSPACE_ROOT``, default ``<tempdir>/collab``). So runs of the same
project (experiment) can be compared side by side in one ``mlflow ui``, and removing old
workspaces never removes the store. Concurrent runs serialize the store's creation and their
experiment lookup through a lock file next to the database. MLflow's ``./mlruns`` is never used.

* the parent run (``run_name``, default the job name) is created on the first record, with tags
  ``collab.job`` and ``collab.role=job``;
* each site's child run (``run_name=<site>``, tags ``collab.site``, ``collab.job``,
  ``mlflow.parentRunId``) is created on that site's first record; the server's own records go to
  a child run named "server";
* numbers -> metrics (``log_batch``, one call per site and batch), params and W&B config ->
  params (a param's value cannot change in MLflow: a different later value is skipped with a
  warning), tags and wandb.init's project/name -> tags (``wandb.project``, ``wandb.name``),
  text -> tag ``text/<tag>`` (the latest text wins), histograms -> skipped (warned once).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .base import Histogram, Param, Receiver, Scalar, Tag, Text, close_all

__all__ = ["MlflowReceiver", "default_store_dir", "default_tracking_uri", "ui_command"]

#: What ``mlflow ui`` needs: mlflow-skinny (the ``[mlflow]`` extra) writes runs but has no UI.
UI_INSTALL = "pip install mlflow"


def default_store_dir() -> Path:
    """The folder of the default, shared store: ``<workspaces root>/mlflow``."""
    root = os.environ.get("COLLAB_WORKSPACE_ROOT") or Path(tempfile.gettempdir()) / "collab"
    return Path(root).absolute() / "mlflow"


def default_tracking_uri() -> str:
    """The store a receiver without ``tracking_uri`` writes to: ``$MLFLOW_TRACKING_URI``, else
    the shared ``sqlite:///<workspaces root>/mlflow/mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or (
        f"sqlite:///{(default_store_dir() / 'mlflow.db').as_posix()}"
    )


def ui_command(tracking_uri: str | None = None) -> str:
    """The shell line that shows ``tracking_uri`` (default: :func:`default_tracking_uri`) in
    MLflow's UI, its install included."""
    tracking_uri = tracking_uri or default_tracking_uri()
    return f"{UI_INSTALL}  &&  mlflow ui --backend-store-uri {tracking_uri}"


@contextlib.contextmanager
def _store_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` across processes (POSIX; a no-op where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # Windows: SQLite's own locking only
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)

# MLflow's limits (mlflow.utils.validation), repeated so that nothing here imports mlflow early.
_MAX_METRICS_PER_BATCH = 1000
_MAX_PARAMS_TAGS_PER_BATCH = 100
_MAX_BATCH_BYTES = 900_000  # MLflow's REST limit is 1e6 bytes per log_batch request
_MAX_KEY = 250
_MAX_PARAM_VALUE = 6000
_MAX_TAG_VALUE = 8000
# MLflow's key rule (validate_param_and_metric_name): colons only where the store is not Windows.
_BAD_KEY_CHARS = re.compile(r"[^/\w.\- ]" if os.name == "nt" else r"[^/\w.\- :]")


def _safe_key(name: str) -> str:
    """``name`` as a valid MLflow metric/param/tag key: alphanumerics, ``_-. /:`` only, and a
    path that normalizes to itself (no empty, ``.`` or ``..`` parts, no leading ``/`` or ``..``)."""
    parts = [_BAD_KEY_CHARS.sub("_", p) for p in name.split("/") if p]
    parts = ["_" * len(p) if p in (".", "..") else p for p in parts]
    key = "/".join(parts)[:_MAX_KEY].rstrip("/")
    if key.startswith(".."):
        key = "_" + key[1:]
    return key or "_"


class MlflowReceiver(Receiver):
    """Options: ``tracking_uri`` (default ``$MLFLOW_TRACKING_URI``, else the shared
    ``sqlite:///<workspaces root>/mlflow/mlflow.db``),
    ``experiment_name`` (default the job name), ``run_name`` (default the job name)."""

    tool = "mlflow"
    extra = "mlflow"
    OPTIONS = ("tracking_uri", "experiment_name", "run_name")

    def __init__(
        self, workspace, job_name: str, *, tracking_uri=None, experiment_name=None, run_name=None
    ) -> None:
        super().__init__(
            workspace,
            job_name,
            tracking_uri=tracking_uri,
            experiment_name=experiment_name,
            run_name=run_name,
        )
        if tracking_uri is None:
            tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or None
        self._store_dir = default_store_dir() if tracking_uri is None else None
        if self._store_dir is not None:
            tracking_uri = f"sqlite:///{(self._store_dir / 'mlflow.db').as_posix()}"
        self.tracking_uri: str = tracking_uri
        self.experiment_name: str = experiment_name or job_name
        self.run_name: str = run_name or job_name
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None
        self.child_run_ids: dict[str, str] = {}
        self._client = None
        self._keys: dict[str, str] = {}
        self._params: dict[str, dict[str, str]] = {}

    @classmethod
    def _check_options(cls, options: Mapping[str, Any]) -> None:
        for name in cls.OPTIONS:
            cls._check_str(options, name)

    @classmethod
    def _required_modules(cls, options):
        uri = options.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI") or None
        if uri is None or uri.startswith(("sqlite:", "mysql", "postgresql", "mssql")):
            # A database store needs SQLAlchemy and Alembic (mlflow-skinny does not bring them).
            return ("mlflow", "sqlalchemy", "alembic")
        return ("mlflow",)

    # ------------------------------------------------------------------------------ runs

    @property
    def ui_command(self) -> str:
        """The shell line that shows this receiver's store in MLflow's UI."""
        return ui_command(self.tracking_uri)

    def _start(self) -> None:
        lock: contextlib.AbstractContextManager = contextlib.nullcontext()
        if self._store_dir is not None:
            self._store_dir.mkdir(parents=True, exist_ok=True)
            lock = _store_lock(self._store_dir / "mlflow.db.lock")
        elif self.tracking_uri.startswith("sqlite:///"):
            db = Path(self.tracking_uri[len("sqlite:///"):])
            if db.parent.is_dir():
                lock = _store_lock(db.parent / f"{db.name}.lock")
        with lock:  # creating the database and the experiment: one process at a time
            self._start_unlocked()

    def _start_unlocked(self) -> None:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=self.tracking_uri)
        experiment = client.get_experiment_by_name(self.experiment_name)
        if experiment is None:
            artifacts = None
            if self._store_dir is not None:
                artifacts = (self._store_dir / "artifacts").as_uri()
            try:
                experiment_id = client.create_experiment(
                    self.experiment_name, artifact_location=artifacts
                )
            except Exception:
                # Another receiver may have created it in the meantime.
                experiment = client.get_experiment_by_name(self.experiment_name)
                if experiment is None:
                    raise
                experiment_id = experiment.experiment_id
        else:
            if experiment.lifecycle_stage != "active":
                raise RuntimeError(
                    f"MLflow experiment {self.experiment_name!r} at {self.tracking_uri} is "
                    "deleted: restore it (mlflow experiments restore) or choose another "
                    "experiment_name"
                )
            experiment_id = experiment.experiment_id
        parent = client.create_run(
            experiment_id,
            run_name=self.run_name,
            tags={"collab.job": self.job_name, "collab.role": "job"},
        )
        self._client = client
        self.experiment_id = experiment_id
        self.parent_run_id = parent.info.run_id

    def _child(self, site: str) -> str:
        run_id = self.child_run_ids.get(site)
        if run_id is None:
            run = self._client.create_run(
                self.experiment_id,
                run_name=site,
                tags={
                    "mlflow.parentRunId": self.parent_run_id,
                    "collab.site": site,
                    "collab.job": self.job_name,
                },
            )
            run_id = self.child_run_ids[site] = run.info.run_id
        return run_id

    def _key(self, name: str) -> str:
        key = self._keys.get(name)
        if key is None:
            key = self._keys[name] = _safe_key(name)
            if key != name:
                self.warn_once(
                    ("renamed", name),
                    "MlflowReceiver: %r is not a valid MLflow key; logged as %r",
                    name,
                    key,
                )
        return key

    # ------------------------------------------------------------------------------ writing

    def _write(self, events) -> None:
        from mlflow.entities import Metric, RunTag
        from mlflow.entities import Param as MlflowParam

        if self._client is None:
            self._start()
        per_site: dict[str, tuple[list, dict, dict]] = {}
        for ev in events:
            metrics, params, tags = per_site.setdefault(ev.site, ([], {}, {}))
            if isinstance(ev, Scalar):
                metrics.append(Metric(self._key(ev.name), ev.value, int(ev.time * 1000), ev.step))
            elif isinstance(ev, Param):
                key = self._key(ev.key)
                value = _param_str(ev.value)[:_MAX_PARAM_VALUE]
                logged = self._params.setdefault(ev.site, {})
                if key not in logged:
                    logged[key] = params[key] = value
                elif logged[key] != value:
                    self.warn_once(
                        ("param changed", ev.site, key),
                        "MlflowReceiver: param %r of %s changed from %r to %r; MLflow params "
                        "cannot change, the new value is skipped",
                        key,
                        ev.site,
                        logged[key],
                        value,
                    )
            elif isinstance(ev, Tag):
                tags[self._key(ev.key)] = ev.value[:_MAX_TAG_VALUE]
            elif isinstance(ev, Text):
                tags[self._key(f"text/{ev.name}")] = ev.text[:_MAX_TAG_VALUE]
            elif isinstance(ev, Histogram):
                self.warn_once(
                    "histogram",
                    "MlflowReceiver: MLflow has no histograms; histogram records are skipped",
                )
        for site, (metrics, params, tags) in per_site.items():
            if not (metrics or params or tags):
                continue
            run_id = self._child(site)
            for batch in _batches(
                metrics,
                [MlflowParam(k, v) for k, v in params.items()],
                [RunTag(k, v) for k, v in tags.items()],
            ):
                self._client.log_batch(run_id, **batch)

    def _close(self) -> None:
        if self._client is None:
            return
        client = self._client
        closers = [
            (f"MLflow run of {site}", lambda r=run_id: client.set_terminated(r, "FINISHED"))
            for site, run_id in self.child_run_ids.items()
        ]
        closers.append(
            ("the MLflow parent run", lambda: client.set_terminated(self.parent_run_id, "FINISHED"))
        )
        close_all(closers)


def _param_str(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def _batches(metrics: list, params: list, tags: list):
    """log_batch keyword sets within MLflow's limits (entities per call, bytes per request)."""
    batch: dict[str, list] = {"metrics": [], "params": [], "tags": []}
    count = size = 0

    def full(kind: str, nbytes: int) -> bool:
        if count >= _MAX_METRICS_PER_BATCH or size + nbytes > _MAX_BATCH_BYTES:
            return True
        if kind == "metrics":
            return len(batch["metrics"]) >= _MAX_METRICS_PER_BATCH
        return len(batch[kind]) >= _MAX_PARAMS_TAGS_PER_BATCH

    for kind, items in (("params", params), ("tags", tags), ("metrics", metrics)):
        for item in items:
            nbytes = 64 + len(item.key) + (len(item.value) if kind != "metrics" else 0)
            if full(kind, nbytes):
                yield batch
                batch = {"metrics": [], "params": [], "tags": []}
                count = size = 0
            batch[kind].append(item)
            count += 1
            size += nbytes
    if count:
        yield batch
