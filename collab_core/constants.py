"""Constants of NVFlare's Collab / Fox APIs, under their names, so programs that import them run
with the import line changed (``from collab_core.constants import ContextKey, BackendType``)."""

from __future__ import annotations

from .app import CONTEXT_PARAM
from .context import RESULT_PROP


class CollabMethodArgName:
    #: a decorated function that declares this parameter receives the call context
    CONTEXT = CONTEXT_PARAM


class ContextKey:
    #: ``collab.get_prop(ContextKey.RESULT)``: the server main's result (in @collab.final)
    RESULT = RESULT_PROP
    #: keys of a filter's context, as Fox named them (collab: ``context.qualified_method`` and
    #: ``context.direction`` of :class:`collab_core.filters.FilterContext`)
    QUALIFIED_FUNC_NAME = "qualified_func_name"
    DIRECTION = "direction"


class FilterDirection:
    """What ``collab.filter_direction`` returns inside a filter."""

    INCOMING = "incoming"
    OUTGOING = "outgoing"


class BackendType:
    """Values of ``collab.backend_type``. Fox knew two settings; collab names three: SimEnv
    (``SIMULATION``), PocEnv (``POC``) and ProdEnv (``FLARE``, the real deployment)."""

    SIMULATION = "sim"
    POC = "poc"
    FLARE = "prod"


MAKE_CLIENT_APP_METHOD = "make_client_app"
