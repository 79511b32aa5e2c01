"""Module-level classes for tests/sim/test_fox_compat.py (Fox-style programs)."""

from __future__ import annotations

import random

from collab_core import RecipeError
from collab_core import collab as fox
from collab_core.constants import BackendType, ContextKey, FilterDirection
from collab_core.logs import get_obj_logger


class Receiver:
    def __init__(self):
        self.got = []

    @fox.collab
    def accept_metric(self, value):
        self.got.append((fox.caller, value))
        return len(self.got)


class Trainer:
    def __init__(self, delta=1.0):
        self.delta = delta

    @fox.collab
    def train(self, current_round, model):
        fox.server.accept_metric(current_round)
        return model + self.delta * fox.get_app_prop("scale", 1)


class Cyclic:
    def __init__(self, num_rounds=2):
        self.num_rounds = num_rounds
        self.logger = get_obj_logger(self)

    @fox.algo
    def run(self):
        model = 0.0
        orders = []
        for r in range(self.num_rounds):
            clients = fox.clients
            random.shuffle(clients)
            orders.append(sorted(c.name for c in clients))
            for c in clients:
                model = c.train(r, model)
        parallel = fox.clients(parallel=0).train(99, 0.0)  # NVFlare's default: no limit
        job_id = fox.fl_ctx.get_job_id()
        try:
            fox.workspace.get_run_dir("some-other-job")
            wrong = "no error"
        except RecipeError as exc:
            wrong = str(exc)
        return {"model": model, "orders": orders, "parallel": sorted(parallel.sites),
                "backend": [fox.backend_type, fox.backend_type == BackendType.SIMULATION],
                "result_prop": fox.get_prop(ContextKey.RESULT, "unset"), "job_id": job_id,
                "run_dir": fox.workspace.get_run_dir(job_id) == fox.workspace.get_run_dir(),
                "wrong_job": wrong, "logger": self.logger.name,
                "outside_filter": [fox.filter_direction, fox.qual_func_name]}

    @fox.final
    def done(self):
        print("FINAL", fox.get_prop(ContextKey.RESULT)["model"])


class Tag:
    """A filter that records where Fox's filter names say it runs."""

    seen: list = []

    @fox.out_result_filter
    def out(self, result):
        Tag.seen.append((fox.site_name, fox.filter_direction == FilterDirection.OUTGOING, fox.qual_func_name))
        return result

    @fox.in_result_filter
    def inc(self, result):
        Tag.seen.append((fox.site_name, fox.filter_direction == FilterDirection.INCOMING, fox.qual_func_name))
        return result


from collab_core.filters import CallFilter, ResultFilter  # noqa: E402 (Fox's base classes)


class Double(CallFilter):
    """A Fox-style call filter: doubles the argument ``model``."""

    def __init__(self, arg_name="model"):
        super().__init__()
        self.arg_name = arg_name

    def filter_call(self, func_kwargs, context):
        func_kwargs[self.arg_name] = func_kwargs[self.arg_name] * 2
        return func_kwargs


class AddTen(ResultFilter):
    def filter_result(self, result, context):
        return result + 10 if context.method == "train" else result
