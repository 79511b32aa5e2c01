"""The client-side writers: the same calls as ``torch.utils.tensorboard.SummaryWriter``, ``mlflow``
and ``wandb``, usable in ``@collab.publish`` methods, Client API scripts, torchrun workers and the
server's ``@collab.main``. Every call becomes a record that collab carries to the server's
receivers (see :mod:`collab_core.tracking`); nothing is written on the client.

Only rank 0 of a worker group logs, unless you ask for every rank (``log_all_ranks(True)`` or
``SummaryWriter(all_ranks=True)``); other ranks' records then carry ``site-1/rank-1`` as site.
"""

from __future__ import annotations

import contextlib
import logging
import numbers
from collections.abc import Iterator, Mapping
from typing import Any

from collab_core import tracking

_all_ranks = False
_skipped: set[str] = set()
log = logging.getLogger("collab.tracking")


def log_all_ranks(enabled: bool = True) -> None:
    """Let ranks other than 0 of a worker group log too (default: only rank 0 logs)."""
    global _all_ranks
    _all_ranks = bool(enabled)


def _emit(record: dict[str, Any], all_ranks: bool = False) -> None:
    if tracking.rank() != 0 and not (all_ranks or _all_ranks):
        return
    tracking.emit(record)


def _number(value: Any, what: str) -> float:
    """A plain float from a Python/numpy/torch scalar."""
    item = getattr(value, "item", None)
    if callable(item):
        value = item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a number (or a 0-d tensor/array), got {type(value).__name__}")
    return float(value)


def _step(step: Any) -> int | None:
    return None if step is None else int(step)


def _array(values: Any) -> Any:
    import numpy as np

    detach = getattr(values, "detach", None)
    if callable(detach):  # a torch tensor, without importing torch
        values = detach().cpu().numpy()
    return np.asarray(values).reshape(-1)


class SummaryWriter:
    """``torch.utils.tensorboard.SummaryWriter``'s logging calls. ``log_dir`` and the like are
    accepted for compatibility; where the event files go is the server's choice."""

    def __init__(self, log_dir: str | None = None, comment: str = "", *, all_ranks: bool = False, **kwargs: Any):
        self.log_dir = log_dir
        self.all_ranks = all_ranks
        self._closed = False

    def _emit(self, record: dict[str, Any]) -> None:
        record["tool"] = "tensorboard"
        _emit(record, self.all_ranks)

    def add_scalar(self, tag: str, scalar_value: Any, global_step: int | None = None, walltime: float | None = None,
                   **kwargs: Any) -> None:
        record = {"op": "scalar", "tag": str(tag), "value": _number(scalar_value, f"add_scalar({tag!r}) value"),
                  "step": _step(global_step)}
        if walltime is not None:
            record["time"] = float(walltime)
        self._emit(record)

    def add_scalars(self, main_tag: str, tag_scalar_dict: Mapping[str, Any], global_step: int | None = None,
                    walltime: float | None = None) -> None:
        values = {str(k): _number(v, f"add_scalars({main_tag!r})[{k!r}]") for k, v in tag_scalar_dict.items()}
        record = {"op": "scalars", "main_tag": str(main_tag), "values": values, "step": _step(global_step)}
        if walltime is not None:
            record["time"] = float(walltime)
        self._emit(record)

    def add_histogram(self, tag: str, values: Any, global_step: int | None = None, bins: str | int = "tensorflow",
                      walltime: float | None = None, **kwargs: Any) -> None:
        record = {"op": "histogram", "tag": str(tag), "values": _array(values), "step": _step(global_step),
                  "bins": bins}
        if walltime is not None:
            record["time"] = float(walltime)
        self._emit(record)

    def add_text(self, tag: str, text_string: str, global_step: int | None = None, walltime: float | None = None) -> None:
        record = {"op": "text", "tag": str(tag), "text": str(text_string), "step": _step(global_step)}
        if walltime is not None:
            record["time"] = float(walltime)
        self._emit(record)

    def flush(self) -> None:
        """Send what this site has logged to the server now (it is also sent after every call)."""
        from collab_core.context import current

        ctx = current(required=False)
        if ctx is not None and tracking._process_sink is None:
            tracking.flush_site(ctx.job, ctx.site_name)

    def close(self) -> None:
        self.flush()
        self._closed = True

    def __enter__(self) -> SummaryWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Mlflow:
    """``mlflow``'s logging calls (``from collab_tracking import mlflow``)."""

    def _emit(self, record: dict[str, Any]) -> None:
        record["tool"] = "mlflow"
        _emit(record)

    def log_metric(self, key: str, value: Any, step: int | None = None, timestamp: int | None = None, **kw: Any) -> None:
        record = {"op": "metric", "key": str(key), "value": _number(value, f"log_metric({key!r}) value"),
                  "step": _step(step)}
        if timestamp is not None:
            record["time"] = timestamp / 1000.0
        self._emit(record)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None, **kw: Any) -> None:
        for key, value in metrics.items():
            self.log_metric(key, value, step=step)

    def log_param(self, key: str, value: Any) -> Any:
        self._emit({"op": "param", "key": str(key), "value": value if isinstance(value, (str, int, float, bool)) else str(value)})
        return value

    def log_params(self, params: Mapping[str, Any]) -> None:
        for key, value in params.items():
            self.log_param(key, value)

    def set_tag(self, key: str, value: Any) -> None:
        self._emit({"op": "tag", "key": str(key), "value": str(value)})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            self.set_tag(key, value)

    @contextlib.contextmanager
    def start_run(self, *args: Any, **kwargs: Any) -> Iterator[None]:
        """Accepted for compatibility: the server owns the runs (one per site)."""
        yield None

    def end_run(self, *args: Any, **kwargs: Any) -> None:
        """Accepted for compatibility: the server ends the runs with the job."""


class _WandbConfig(dict):
    """``wandb.config``: a dict whose updates are recorded."""

    def _record(self, data: Mapping[str, Any]) -> None:
        _emit({"tool": "wandb", "op": "wandb_config", "data": dict(data)})

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        self._record({key: value})

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def update(self, other: Any = (), **kwargs: Any) -> None:  # type: ignore[override]
        data = dict(other, **kwargs)
        super().update(data)
        self._record(data)


class _WandbRun:
    def __init__(self, wandb: _Wandb):
        self._wandb = wandb

    @property
    def config(self) -> _WandbConfig:
        return self._wandb.config

    def log(self, data: Mapping[str, Any], step: int | None = None, commit: bool | None = None) -> None:
        self._wandb.log(data, step=step, commit=commit)

    def finish(self, *args: Any, **kwargs: Any) -> None:
        self._wandb.finish()

    def __enter__(self) -> _WandbRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()


class _Wandb:
    """``wandb``'s logging calls (``from collab_tracking import wandb``)."""

    def __init__(self) -> None:
        self.config = _WandbConfig()
        self.run: _WandbRun | None = None

    def init(self, project: str | None = None, config: Mapping[str, Any] | None = None, name: str | None = None,
             **kwargs: Any) -> _WandbRun:
        cfg = dict(config or {})
        dict.update(self.config, cfg)
        _emit({"tool": "wandb", "op": "wandb_init", "project": project, "name": name, "config": cfg})
        self.run = _WandbRun(self)
        return self.run

    def log(self, data: Mapping[str, Any], step: int | None = None, commit: bool | None = None, **kw: Any) -> None:
        values = {}
        for key, value in data.items():
            item = getattr(value, "item", None)
            if callable(item) and getattr(value, "ndim", 0) == 0:
                value = item()
            if isinstance(value, (numbers.Number, str, bool)):
                values[str(key)] = value
            elif str(key) not in _skipped:
                _skipped.add(str(key))
                log.warning("wandb.log(%r): only numbers and strings are carried to the server; %s values "
                            "are skipped", key, type(value).__name__)
        _emit({"tool": "wandb", "op": "wandb_log", "data": values, "step": _step(step)})

    def finish(self, *args: Any, **kwargs: Any) -> None:
        _emit({"tool": "wandb", "op": "wandb_finish"})
        self.run = None


mlflow = _Mlflow()
wandb = _Wandb()
