"""What every server-side tracking receiver shares: options checking, record conversion, steps.

A receiver turns the tracking *records* the sites send (one dict per logged value, see
``docs/tracking-receivers.md``) into one tracking tool's own artifacts. The work is split in two:

* :meth:`Receiver.receive` converts each record into a small typed *event* (:class:`Scalar`,
  :class:`Histogram`, :class:`Text`, :class:`Param`, :class:`Tag`). Conversion never touches the
  tracking library; a record it cannot convert (a missing field, a value that is not a number) is
  skipped and reported once per kind of problem, so one bad record cannot stop a job's tracking.
* the subclass's :meth:`Receiver._write` hands the events to the tracking library. Errors from the
  library are *not* caught here: they reach the caller, which reports them.
"""

from __future__ import annotations

import importlib
import logging
import numbers
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from collab_core.errors import PluginError

log = logging.getLogger("collab_tracking.receivers")

__all__ = ["Histogram", "Param", "Receiver", "Scalar", "Tag", "Text"]

#: The ``bins`` values a histogram record may carry (TensorBoard's "tensorflow", numpy's names).
HISTOGRAM_BIN_NAMES = frozenset(
    {"tensorflow", "auto", "fd", "doane", "scott", "stone", "rice", "sturges", "sqrt"}
)


# --------------------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Scalar:
    site: str
    name: str
    value: float
    step: int
    time: float


@dataclass(frozen=True, slots=True)
class Histogram:
    site: str
    name: str
    values: Any  # 1-D float64 numpy array, finite values only, never empty
    bins: int | str
    step: int
    time: float


@dataclass(frozen=True, slots=True)
class Text:
    site: str
    name: str
    text: str
    step: int
    time: float


@dataclass(frozen=True, slots=True)
class Param:
    """A parameter / config entry (mlflow.log_param, wandb config); nested keys joined by "/"."""

    site: str
    key: str
    value: Any  # str, int, float, bool, None, or a list/tuple of those (from a W&B config)
    time: float


@dataclass(frozen=True, slots=True)
class Tag:
    site: str
    key: str
    value: str
    time: float


Event = Scalar | Histogram | Text | Param | Tag


class RecordError(ValueError):
    """A record that cannot be converted; it is skipped with a one-time warning."""


# ------------------------------------------------------------------------------------- helpers


def as_number(value: Any) -> float | None:
    """``value`` as a float when it is a real number (bools, numpy scalars, 1-element arrays
    included); None otherwise."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, numbers.Real):
        return float(value)
    size = getattr(value, "size", None)
    dtype = getattr(value, "dtype", None)
    if size == 1 and dtype is not None and getattr(dtype, "kind", "") in "biuf":
        try:
            return float(value.reshape(()) if hasattr(value, "reshape") else value)
        except (TypeError, ValueError):
            return None
    return None


def flatten(data: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Nested mappings as ("outer/inner", value) pairs."""
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from flatten(value, f"{name}/")
        else:
            yield name, value


def as_step(step: Any) -> int | None:
    if step is None:
        return None
    if isinstance(step, bool):
        raise RecordError(f"step must be an int, not {step!r}")
    if isinstance(step, numbers.Integral):
        return int(step)
    if isinstance(step, numbers.Real) and float(step).is_integer():
        return int(step)
    number = as_number(step)
    if number is not None and number.is_integer():
        return int(number)
    raise RecordError(f"step must be an int or None, not {step!r}")


# ------------------------------------------------------------------------------------ receiver


class Receiver:
    """Base of the server-side receivers: ``Receiver(workspace, job_name, **options)``.

    ``receive(records)`` is called from one dedicated thread per receiver; ``close()`` flushes and
    is idempotent. ``check(**options)`` validates options and that the tracking library imports,
    raising :class:`~collab_core.errors.PluginError` otherwise.
    """

    #: The tool's name as the plugin and docs spell it ("tensorboard", "mlflow", "wandb").
    tool: ClassVar[str] = ""
    #: The pip extra of collab-tracking that installs what this receiver needs.
    extra: ClassVar[str] = ""
    #: The options the constructor accepts (every one may be None = its default).
    OPTIONS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, workspace: str | os.PathLike[str], job_name: str, **options: Any) -> None:
        type(self).check(**options)
        if not isinstance(job_name, str) or not job_name:
            raise PluginError(f"{type(self).__name__}: job_name must be a non-empty string")
        self.workspace = Path(workspace)
        self.job_name = job_name
        self._lock = threading.RLock()
        self._closed = False
        self._last_step: dict[tuple[str, str], int] = {}
        self._warned: set[Any] = set()

    # ------------------------------------------------------------------------------ checking

    @classmethod
    def check(cls, **options: Any) -> None:
        """Raise PluginError for an unknown or bad option, or when the library is missing."""
        unknown = sorted(set(options) - set(cls.OPTIONS))
        if unknown:
            known = ", ".join(cls.OPTIONS) or "none"
            raise PluginError(
                f"{cls.__name__}: unknown option(s) {', '.join(map(repr, unknown))}; "
                f"the options are: {known}"
            )
        cls._check_options(options)
        for module in cls._required_modules(options):
            try:
                importlib.import_module(module)
            except Exception as exc:  # ImportError, or a broken install failing on import
                raise PluginError(
                    f"{cls.__name__} needs the Python package {module!r}, which cannot be "
                    f"imported ({type(exc).__name__}: {exc}). Install it with: "
                    f"pip install 'collab-tracking[{cls.extra}]'"
                ) from exc
        cls._check_library(options)

    @classmethod
    def _check_options(cls, options: Mapping[str, Any]) -> None:
        """Subclasses: raise PluginError for a bad option value."""

    @classmethod
    def _required_modules(cls, options: Mapping[str, Any]) -> Iterable[str]:
        return ()

    @classmethod
    def _check_library(cls, options: Mapping[str, Any]) -> None:
        """Subclasses: raise PluginError when the imported library is too old."""

    @classmethod
    def _check_str(cls, options: Mapping[str, Any], name: str, *, path: bool = False) -> None:
        value = options.get(name)
        if value is None:
            return
        ok = isinstance(value, str) or (path and isinstance(value, os.PathLike))
        if not ok or (isinstance(value, str) and not value.strip()):
            kind = "a non-empty string or a path" if path else "a non-empty string"
            raise PluginError(f"{cls.__name__}: option {name!r} must be {kind}, not {value!r}")

    # ------------------------------------------------------------------------------ the API

    def receive(self, records: list[dict]) -> None:
        """Convert ``records`` and write them to the tool (may block on the tool's I/O)."""
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{type(self).__name__} of job {self.job_name!r} is closed")
            events: list[Event] = []
            for record in records:
                try:
                    events.extend(self._convert(record))
                except Exception as exc:
                    op = record.get("op") if isinstance(record, Mapping) else None
                    self.warn_once(
                        ("bad record", op, type(exc).__name__),
                        "%s: skipping a tracking record (op=%r) that cannot be converted: %s: %s "
                        "(further such records are skipped silently)",
                        type(self).__name__,
                        op,
                        type(exc).__name__,
                        exc,
                    )
            if events:
                self._write(events)

    def close(self) -> None:
        """Flush everything and release the tool; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._close()

    # ------------------------------------------------------------------------------ subclasses

    def _write(self, events: list[Event]) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------------------ helpers

    def warn_once(self, key: Any, msg: str, *args: Any) -> None:
        if key in self._warned:
            return
        self._warned.add(key)
        log.warning(msg, *args)

    def _step(self, site: str, name: str, step: Any) -> int:
        """The record's step, or (None) the next of a per-(site, name) counter from 0."""
        value = as_step(step)
        if value is None:
            last = self._last_step.get((site, name))
            value = 0 if last is None else last + 1
        self._last_step[(site, name)] = value
        return value

    def _convert(self, record: Mapping[str, Any]) -> list[Event]:
        if not isinstance(record, Mapping):
            raise RecordError(f"a record must be a dict, not {type(record).__name__}")
        try:
            site = record["site"]
            op = record["op"]
        except KeyError as exc:
            raise RecordError(f"the record has no {exc.args[0]!r}") from None
        if not isinstance(site, str) or not site:
            raise RecordError(f"'site' must be a non-empty string, not {site!r}")
        t = record.get("time")
        t = float(t) if isinstance(t, numbers.Real) and not isinstance(t, bool) else time.time()

        def field(name: str) -> Any:
            try:
                return record[name]
            except KeyError:
                raise RecordError(f"a {op!r} record has no {name!r}") from None

        def name_of(value: Any, what: str) -> str:
            if not isinstance(value, str) or not value:
                raise RecordError(f"{what} must be a non-empty string, not {value!r}")
            return value

        if op in ("scalar", "metric"):
            name = name_of(field("tag" if op == "scalar" else "key"), "the name")
            return self._scalars(site, op, [(name, field("value"))], record.get("step"), t)
        if op == "scalars":
            main = name_of(field("main_tag"), "main_tag")
            values = field("values")
            if not isinstance(values, Mapping):
                raise RecordError(f"'values' must be a dict, not {type(values).__name__}")
            return self._scalars(
                site, op, [(f"{main}/{k}", v) for k, v in values.items()], record.get("step"), t
            )
        if op == "wandb_log":
            data = field("data")
            if not isinstance(data, Mapping):
                raise RecordError(f"'data' must be a dict, not {type(data).__name__}")
            return self._scalars(site, op, list(flatten(data)), record.get("step"), t)
        if op == "histogram":
            return self._convert_histogram(site, record, field, name_of, t)
        if op == "text":
            name = name_of(field("tag"), "tag")
            text = field("text")
            text = text if isinstance(text, str) else str(text)
            return [Text(site, name, text, self._step(site, name, record.get("step")), t)]
        if op == "param":
            key = name_of(field("key"), "key")
            return [Param(site, key, field("value"), t)]
        if op == "tag":
            key = name_of(field("key"), "key")
            value = field("value")
            return [Tag(site, key, value if isinstance(value, str) else str(value), t)]
        if op == "wandb_init":
            events: list[Event] = []
            for key in ("project", "name"):
                value = record.get(key)
                if value is not None:
                    events.append(Tag(site, f"wandb.{key}", str(value), t))
            config = record.get("config") or {}
            if not isinstance(config, Mapping):
                raise RecordError(f"'config' must be a dict, not {type(config).__name__}")
            events.extend(Param(site, k, v, t) for k, v in flatten(config))
            return events
        if op == "wandb_config":
            data = field("data")
            if not isinstance(data, Mapping):
                raise RecordError(f"'data' must be a dict, not {type(data).__name__}")
            return [Param(site, k, v, t) for k, v in flatten(data)]
        if op == "wandb_finish":
            return []
        raise RecordError(f"unknown op {op!r}")

    def _scalars(
        self, site: str, op: str, items: list[tuple[str, Any]], step: Any, t: float
    ) -> list[Event]:
        as_step(step)  # a bad step fails the whole record before any counter moves
        events: list[Event] = []
        for name, value in items:
            number = as_number(value)
            if number is None:
                self.warn_once(
                    ("not a number", op, name),
                    "%s: the %s value of %r from %s is a %s, not a number; skipped (warned once "
                    "per name)",
                    type(self).__name__,
                    op,
                    name,
                    site,
                    type(value).__name__,
                )
                continue
            events.append(Scalar(site, name, number, self._step(site, name, step), t))
        return events

    def _convert_histogram(self, site, record, field, name_of, t) -> list[Event]:
        import numpy as np

        name = name_of(field("tag"), "tag")
        try:
            values = np.asarray(field("values"), dtype=np.float64).ravel()
        except (TypeError, ValueError) as exc:
            raise RecordError(f"histogram values are not numeric: {exc}") from None
        finite = np.isfinite(values)
        if not finite.all():
            self.warn_once(
                ("non-finite histogram", name),
                "%s: histogram %r from %s has NaN/inf values; they are left out (warned once)",
                type(self).__name__,
                name,
                site,
            )
            values = values[finite]
        if values.size == 0:
            raise RecordError(f"histogram {name!r} has no (finite) values")
        bins = record.get("bins", "tensorflow")
        if bins is None:
            bins = "tensorflow"
        if isinstance(bins, bool) or not (
            (isinstance(bins, numbers.Integral) and bins > 0)
            or (isinstance(bins, str) and bins in HISTOGRAM_BIN_NAMES)
        ):
            self.warn_once(
                ("bad bins", repr(bins)),
                "%s: histogram bins=%r is not supported; using 'tensorflow' (warned once)",
                type(self).__name__,
                bins,
            )
            bins = "tensorflow"
        elif isinstance(bins, numbers.Integral):
            bins = int(bins)
        return [Histogram(site, name, values, bins, self._step(site, name, record.get("step")), t)]


def close_all(closers: Iterable[tuple[str, Any]]) -> None:
    """Call every ``(what, close)`` pair, then raise the first error (the others are logged)."""
    first: BaseException | None = None
    for what, closer in closers:
        try:
            closer()
        except Exception as exc:
            if first is None:
                first = exc
            else:
                log.error("closing %s failed too: %s: %s", what, type(exc).__name__, exc)
    if first is not None:
        raise first
