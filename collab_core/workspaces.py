"""Where runs keep their workspaces, and how old ones go away.

A run without ``workspace=`` gets a new folder under ``<root>/<kind>/`` (kind: sim, poc, prod),
``<root>`` being ``$COLLAB_WORKSPACE_ROOT`` or ``<tempdir>/collab``. Each new run keeps the
newest ``$COLLAB_KEEP_RUNS`` (default 20; 0: never prune) folders of its kind and removes older ones; a folder
whose run is still going (its ``.collab-run`` names a live process) is never removed, nor is
anything that is not a run folder (e.g. ``<root>/mlflow``, the shared MLflow store).
``collab clean`` does the same on demand (``--keep 0`` removes every finished run).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from .errors import CollabError

KINDS = ("sim", "poc", "prod")
MARKER = ".collab-run"
DEFAULT_KEEP = 20


def root() -> Path:
    return Path(os.environ.get("COLLAB_WORKSPACE_ROOT") or Path(tempfile.gettempdir()) / "collab")


def keep_runs() -> int:
    raw = os.environ.get("COLLAB_KEEP_RUNS")
    if raw is None or raw == "":
        return DEFAULT_KEEP
    try:
        value = int(raw)
    except ValueError:
        raise CollabError(f"COLLAB_KEEP_RUNS must be a whole number of runs to keep, got {raw!r}") from None
    if value < 0:
        raise CollabError(f"COLLAB_KEEP_RUNS must be >= 0, got {value}")
    return value


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def in_use(folder: Path) -> bool:
    try:
        pid = int((folder / MARKER).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    return _alive(pid)


def new_run_folder(kind: str, job_name: str) -> Path:
    """A fresh workspace for a run of ``job_name``, marked as in use by this process; older
    finished runs of the same kind beyond ``keep_runs()`` are removed first."""
    base = root() / kind
    base.mkdir(parents=True, exist_ok=True)
    keep = keep_runs()
    prune(kind, keep - 1 if keep else None)  # with the new run, `keep` runs; 0: keep all
    path = base / f"{job_name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    path.mkdir(parents=True)
    (path / MARKER).write_text(f"{os.getpid()}\n")
    return path


def release(folder: Path) -> None:
    """The run in ``folder`` is over (its folder may be pruned from now on)."""
    try:
        (Path(folder) / MARKER).unlink()
    except OSError:
        pass


def _runs(kind: str) -> list[Path]:
    base = root() / kind
    if not base.is_dir():
        return []
    runs = [p for p in base.iterdir() if p.is_dir() and not p.is_symlink()]
    return sorted(runs, key=lambda p: p.stat().st_mtime, reverse=True)


def prune(kind: str, keep: int | None) -> list[Path]:
    """Remove all but the newest ``keep`` run folders of ``kind`` (None: keep all); folders in use
    are kept and not counted. Returns what was removed."""
    if keep is None:
        return []
    removed = []
    finished = [p for p in _runs(kind) if not in_use(p)]
    for folder in finished[keep:]:
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def clean(keep: int = 0, kinds: tuple[str, ...] = KINDS, dry_run: bool = False) -> list[Path]:
    """``collab clean``: remove finished runs beyond the newest ``keep`` of each kind."""
    out = []
    for kind in kinds:
        if dry_run:
            out.extend([p for p in _runs(kind) if not in_use(p)][keep:])
        else:
            out.extend(prune(kind, keep))
    return out
