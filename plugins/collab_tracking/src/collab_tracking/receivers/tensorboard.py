"""TensorBoardReceiver: one TensorBoard run (an event-file folder) per site, written with tensorboardX.

Layout: ``<log_dir>/<site>/events.out.tfevents.*`` (``log_dir`` defaults to
``<workspace>/tensorboard``), so ``tensorboard --logdir <log_dir>`` lists every site, and the
server's own records (site "server"), as a run of its own. The ``[tensorboard]`` extra brings
tensorboardX, which writes the files; the ``tensorboard`` viewer is a separate install
(``pip install tensorboard``), see :func:`ui_command`.

* scalars / metrics / wandb.log numbers -> scalar summaries (``add_scalars`` values as
  ``main_tag/key``), histograms -> histogram summaries, text -> text summaries;
* mlflow tags and wandb.init's project/name -> text summaries ``tags/<key>``;
* params and W&B config -> one HParams session per site, written at ``close()`` (the HParams
  dashboard then shows each site as a session with its parameters and its scalars as metrics).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .base import Histogram, Param, Receiver, Scalar, Tag, Text, close_all

__all__ = ["TensorBoardReceiver", "ui_command"]

#: What ``tensorboard --logdir`` needs: tensorboardX (the ``[tensorboard]`` extra) only writes.
UI_INSTALL = "pip install tensorboard"


def ui_command(log_dir) -> str:
    """The shell line that shows ``log_dir`` in TensorBoard, its install included."""
    return f"{UI_INSTALL}  &&  tensorboard --logdir {Path(log_dir)}"

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _folder_name(site: str) -> str:
    name = _UNSAFE.sub("_", site).strip()
    if name in ("", ".", ".."):
        name = name.replace(".", "_") or "_"
    return name


class TensorBoardReceiver(Receiver):
    """Writes TensorBoard event files: ``<log_dir>/<site>/``; option ``log_dir``."""

    tool = "tensorboard"
    extra = "tensorboard"
    OPTIONS = ("log_dir",)

    #: Seconds between the event writers' background flushes (TensorBoard reloads every ~30 s).
    flush_secs = 10

    def __init__(self, workspace, job_name: str, *, log_dir=None) -> None:
        super().__init__(workspace, job_name, log_dir=log_dir)
        self.log_dir = Path(log_dir) if log_dir is not None else self.workspace / "tensorboard"
        self._writers: dict[str, Any] = {}
        self._folders: dict[str, Path] = {}
        self._hparams: dict[str, dict[str, Any]] = {}
        self._scalar_tags: dict[str, set[str]] = {}

    @classmethod
    def _check_options(cls, options: Mapping[str, Any]) -> None:
        cls._check_str(options, "log_dir", path=True)

    @classmethod
    def _required_modules(cls, options):
        return ("tensorboardX",)

    def folder(self, site: str) -> Path:
        """The run folder of ``site`` (``<log_dir>/<site>``, made file-system safe and unique)."""
        folder = self._folders.get(site)
        if folder is None:
            base = _folder_name(site)
            taken = set(self._folders.values())
            folder, n = self.log_dir / base, 1
            while folder in taken:
                n += 1
                folder = self.log_dir / f"{base}-{n}"
            self._folders[site] = folder
        return folder

    def _writer(self, site: str):
        writer = self._writers.get(site)
        if writer is None:
            from tensorboardX import SummaryWriter

            folder = self.folder(site)
            folder.mkdir(parents=True, exist_ok=True)
            writer = SummaryWriter(logdir=str(folder), max_queue=1000, flush_secs=self.flush_secs)
            self._writers[site] = writer
        return writer

    def _write(self, events) -> None:
        for ev in events:
            w = self._writer(ev.site)
            if isinstance(ev, Scalar):
                w.add_scalar(ev.name, ev.value, ev.step, walltime=ev.time)
                self._scalar_tags.setdefault(ev.site, set()).add(ev.name)
            elif isinstance(ev, Histogram):
                w.add_histogram(ev.name, ev.values, ev.step, bins=ev.bins, walltime=ev.time)
            elif isinstance(ev, Text):
                w.add_text(ev.name, ev.text, ev.step, walltime=ev.time)
            elif isinstance(ev, Tag):
                w.add_text(f"tags/{ev.key}", ev.value, 0, walltime=ev.time)
            elif isinstance(ev, Param):
                self._hparams.setdefault(ev.site, {})[ev.key] = _hparam_value(ev.value)

    def _write_hparams(self, site: str, params: dict[str, Any]) -> None:
        from tensorboardX.summary import hparams

        # Only the session start/end infos: with no experiment summary TensorBoard's HParams
        # plugin builds the experiment from every session (site) and its scalar tags.
        _, start, end = hparams(
            params, {tag: 0.0 for tag in sorted(self._scalar_tags.get(site, ()))}
        )
        writer = self._writer(site)
        writer.file_writer.add_summary(start)
        writer.file_writer.add_summary(end)

    def _close(self) -> None:
        closers: list[tuple[str, Any]] = [
            (f"TensorBoard hparams of {site}", lambda s=site, p=p: self._write_hparams(s, p))
            for site, p in self._hparams.items()
        ]
        closers += [(f"TensorBoard writer of {site}", w.close) for site, w in self._writers.items()]
        close_all(closers)


def _hparam_value(value: Any) -> Any:
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    try:
        return json.dumps(value, default=str)
    except (TypeError, ValueError):
        return str(value)
