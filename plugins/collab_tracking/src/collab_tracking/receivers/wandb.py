"""WandbReceiver: one W&B run per site, grouped by job, offline unless the user asks otherwise.

Each site's run is created on that site's first record: ``wandb.init(project=<project>,
name=<site>, group=<job name>, job_type="site", dir=<dir>, mode=<mode>, reinit="create_new")``
(several live runs in one process need wandb >= 0.19.10). The mode is the ``mode`` option, else
``$WANDB_MODE`` (W&B's aliases ``dryrun`` = offline, ``run`` = online), else offline: nothing
reaches the network unless asked for. In offline mode the runs
land in ``<dir>/wandb/offline-run-<time>-<id>/`` (``dir`` defaults to the job's workspace);
``wandb sync <dir>/wandb/offline-run-*`` uploads them later.

* numbers -> history rows (``run.log(row, step=step)``): the values a site logs for the same
  step are merged into one row; ``add_scalars`` values are named ``main_tag/key``, nested
  ``wandb.log`` dicts ``outer/inner``;
* W&B needs every run's steps to increase: a value whose step is below one already written (or
  a second value for the same name and step) goes into a row of its own at the next free W&B
  step, with its own step in the row as ``"step"`` (warned once per site);
* histograms -> ``wandb.Histogram`` in the history; params and W&B config -> ``run.config``;
  tags -> ``run.config["tags/<key>"]``; text -> ``run.summary[<tag>]`` (the latest text wins);
* ``wandb_finish`` records are ignored: every site's run is finished by ``close()``.

The runs do not capture the server's console (``console="off"``) nor sample system metrics.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from collab_core.errors import PluginError

from .base import Histogram, Param, Receiver, Scalar, Tag, Text, close_all

__all__ = ["WandbReceiver", "sync_command"]

MODES = ("offline", "online", "disabled")


def sync_command(dir) -> str:
    """The shell line that uploads the offline runs under ``dir`` (wandb, the extra, has it)."""
    return f"wandb sync {Path(dir) / 'wandb'}/offline-run-*"


_MODE_ALIASES = {"dryrun": "offline", "run": "online"}  # W&B's own names for WANDB_MODE
MIN_WANDB = "0.19.10"  # reinit="create_new": several live runs in one process
_MAX_BINS = 512  # wandb.Histogram's limit
_DEFAULT_BINS = 64


@dataclass
class _SiteRun:
    run: Any
    row: dict[str, Any] = field(default_factory=dict)
    row_step: int = -1
    row_late: bool = False
    next_step: int = 0  # the lowest step W&B still accepts for this run
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


class WandbReceiver(Receiver):
    """Options: ``project`` (default the job name), ``mode`` ("offline", "online", "disabled";
    default ``$WANDB_MODE``, else "offline"), ``dir`` (default the workspace), ``entity`` (W&B entity; online only)."""

    tool = "wandb"
    extra = "wandb"
    OPTIONS = ("project", "mode", "dir", "entity")

    def __init__(
        self, workspace, job_name: str, *, project=None, mode=None, dir=None, entity=None
    ) -> None:
        super().__init__(workspace, job_name, project=project, mode=mode, dir=dir, entity=entity)
        self.project: str = project or job_name
        self.mode: str = mode or _env_mode() or "offline"
        self.dir = Path(dir) if dir is not None else self.workspace
        self.entity: str | None = entity
        self._runs: dict[str, _SiteRun] = {}

    @classmethod
    def _check_options(cls, options: Mapping[str, Any]) -> None:
        for name in ("project", "mode", "entity"):
            cls._check_str(options, name)
        cls._check_str(options, "dir", path=True)
        mode = options.get("mode")
        if mode is not None and mode not in MODES:
            raise PluginError(
                f"WandbReceiver: mode must be one of {', '.join(map(repr, MODES))}, not {mode!r}"
            )
        if mode is None:
            _env_mode()

    @classmethod
    def _required_modules(cls, options):
        return ("wandb",)

    @classmethod
    def _check_library(cls, options) -> None:
        import wandb
        from packaging.version import InvalidVersion, Version

        try:
            too_old = Version(wandb.__version__) < Version(MIN_WANDB)
        except InvalidVersion:
            too_old = False
        if too_old:
            raise PluginError(
                f"WandbReceiver needs wandb>={MIN_WANDB} (one run per site in one process), "
                f"found {wandb.__version__}. Upgrade it with: "
                "pip install -U 'collab-tracking[wandb]'"
            )

    # ------------------------------------------------------------------------------ runs

    def _settings(self):
        import wandb

        settings: dict[str, Any] = {
            "console": "off",
            "silent": True,
            "save_code": False,
            "disable_code": True,
            "disable_git": True,
        }
        # Private switches (no system metrics of the server process, no requirements.txt):
        # used only where this wandb has them.
        fields = getattr(wandb.Settings, "model_fields", {})
        for name, value in (("x_disable_stats", True), ("x_save_requirements", False)):
            if name in fields:
                settings[name] = value
        return wandb.Settings(**settings)

    def _site(self, site: str) -> _SiteRun:
        state = self._runs.get(site)
        if state is None:
            import wandb

            self.dir.mkdir(parents=True, exist_ok=True)
            run = wandb.init(
                project=self.project,
                entity=self.entity,
                name=site,
                group=self.job_name,
                job_type="site",
                dir=str(self.dir),
                mode=self.mode,
                reinit="create_new",
                config={"collab_site": site, "collab_job": self.job_name},
                settings=self._settings(),
            )
            state = self._runs[site] = _SiteRun(run)
        return state

    # ------------------------------------------------------------------------------ writing

    def _write(self, events) -> None:
        for ev in events:
            state = self._site(ev.site)
            if isinstance(ev, Scalar):
                self._add(ev.site, state, ev.name, ev.value, ev.step)
            elif isinstance(ev, Histogram):
                self._add(ev.site, state, ev.name, self._histogram(ev), ev.step)
            elif isinstance(ev, Param):
                state.config[ev.key] = ev.value
            elif isinstance(ev, Tag):
                state.config[f"tags/{ev.key}"] = ev.value
            elif isinstance(ev, Text):
                state.summary[ev.name] = ev.text
        for state in self._runs.values():
            if state.config:
                state.run.config.update(state.config, allow_val_change=True)
                state.config.clear()
            if state.summary:
                state.run.summary.update(state.summary)
                state.summary.clear()

    def _add(self, site: str, state: _SiteRun, name: str, value: Any, step: int) -> None:
        if state.row and state.row_step == step and name not in state.row:
            state.row[name] = value
            return
        self._flush_row(state)
        late = step < state.next_step
        if late:
            self.warn_once(
                ("late step", site),
                "WandbReceiver: %s logged %r at step %d, but W&B run steps must increase and "
                "step %d is already written; such values go to the next free W&B step with "
                "their own step as 'step' (warned once per site)",
                site,
                name,
                step,
                state.next_step - 1,
            )
        state.row, state.row_step, state.row_late = {name: value}, step, late

    def _flush_row(self, state: _SiteRun) -> None:
        if not state.row:
            return
        row, state.row = state.row, {}
        if state.row_late:
            row["step"] = state.row_step
            state.run.log(row, step=state.next_step, commit=True)
            state.next_step += 1
        else:
            state.run.log(row, step=state.row_step, commit=True)
            state.next_step = state.row_step + 1

    def _histogram(self, ev: Histogram):
        import numpy as np
        import wandb

        bins: Any = ev.bins
        if bins == "tensorflow":
            bins = _DEFAULT_BINS
        if isinstance(bins, int):
            bins = min(bins, _MAX_BINS)
        else:
            edges = np.histogram_bin_edges(ev.values, bins=bins)
            bins = edges if len(edges) - 1 <= _MAX_BINS else _MAX_BINS
        counts, edges = np.histogram(ev.values, bins=bins)
        return wandb.Histogram(np_histogram=(counts, edges))

    def _close(self) -> None:
        closers = []
        for site, state in self._runs.items():

            def finish(state=state):
                try:
                    self._flush_row(state)
                finally:
                    state.run.finish(exit_code=0)

            closers.append((f"the W&B run of {site}", finish))
        close_all(closers)


def _env_mode() -> str | None:
    """``$WANDB_MODE`` as one of MODES (None when unset); a PluginError when it is not one."""
    value = os.environ.get("WANDB_MODE", "").strip().lower()
    if not value:
        return None
    mode = _MODE_ALIASES.get(value, value)
    if mode not in MODES:
        raise PluginError(
            f"WandbReceiver: WANDB_MODE must be one of {', '.join(map(repr, MODES))}, "
            f"not {value!r}"
        )
    return mode
