"""FLModel: the message the Client API exchanges (``collab_core.client``), as an attrs class.

It crosses the wire under the tag ``collab.FLModel``; tensors and arrays inside ``params`` travel
out of band like anywhere else.
"""

from __future__ import annotations

import enum
from typing import Any

import attrs

__all__ = ["FLModel", "ParamsType"]


class ParamsType(str, enum.Enum):
    """What ``FLModel.params`` holds: the full weights or a difference to apply to them."""

    FULL = "FULL"
    DIFF = "DIFF"

    def __str__(self) -> str:
        return self.value


def _params_type(value: Any) -> str:
    if isinstance(value, ParamsType):
        return value.value
    if isinstance(value, str) and value in ("FULL", "DIFF"):
        return str(value)
    if isinstance(value, str) and value.upper() in ("FULL", "DIFF"):
        return value.upper()
    raise ValueError(f"FLModel.params_type must be 'FULL' or 'DIFF' (or a ParamsType), got {value!r}")


def _int(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not hasattr(type(value), "__index__"):  # int, numpy integers
        raise TypeError(f"FLModel.{attribute.name} must be an int, got {value!r}")


def _optional_int(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and not hasattr(type(value), "__index__"):
        raise TypeError(f"FLModel.{attribute.name} must be an int or None, got {value!r}")


def _summary(value: Any) -> str:
    if isinstance(value, dict):
        return f"<{len(value)} entries>"
    if value is None:
        return "None"
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"<{type(value).__name__} shape={tuple(shape)}>"
    r = repr(value)
    return r if len(r) <= 80 else r[:77] + "..."


@attrs.define
class FLModel:
    """Model weights (or their difference), metrics and metadata for one round.

    ``params``: usually a dict of arrays/tensors (a state dict). ``params_type``: "FULL" or
    "DIFF" (a :class:`ParamsType` is accepted and stored as its string). ``metrics``: e.g.
    ``{"accuracy": 0.9}``. ``meta``: free-form metadata. Rounds count from ``start_round``.
    """

    params: Any = attrs.field(default=None, repr=_summary)
    params_type: str = attrs.field(default="FULL", converter=_params_type)
    metrics: dict[str, Any] | None = None
    meta: dict[str, Any] = attrs.field(factory=dict)
    current_round: int | None = attrs.field(default=None, validator=_optional_int)
    total_rounds: int | None = attrs.field(default=None, validator=_optional_int)
    start_round: int = attrs.field(default=0, validator=_int)
