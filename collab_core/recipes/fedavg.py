"""FedAvgRecipe: weighted federated averaging of a Client API training script."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

from ..api import collab
from ..errors import RecipeError
from ..fl_model import FLModel
from ..progress import format_metrics, report_round
from ..recipe import RecipeBase
from .common import (
    MODEL_FILE,
    ModelFiles,
    check_rounds,
    function_ref,
    function_source,
    initial_params,
    model_file,
    resolve_function,
    save_model,
    weighted_average,
)

log = logging.getLogger("collab.recipes.fedavg")


class FedAvgServer(ModelFiles):
    """Scatter the global model, gather the sites' models, average them weighted by
    ``meta["num_samples"]`` (in the sites' name order, so a seeded run gives the same floats every
    time); save the global model after every round."""

    def __init__(self, num_rounds: int, initial_model: str | None = None, clients_per_round: int | None = None,
                 min_responses: int | None = None, seed: int = 0, evaluate: Any = None,
                 keep_models: bool | int = False):
        self.num_rounds = num_rounds
        self.initial_model = initial_model
        self.clients_per_round = clients_per_round
        self.min_responses = min_responses
        self.seed = seed
        self.evaluate = evaluate  # a function, or its "module:qualname" in an exported job
        self.keep_models = keep_models

    def collab_export_args(self) -> dict[str, Any]:
        args = super().collab_export_args()
        args["evaluate"] = function_ref(self.evaluate, "evaluate")
        return args

    def collab_export_files(self) -> dict[str, Path]:
        files = super().collab_export_files()
        files.update(function_source(self.evaluate))
        return files

    def _evaluate(self, params: Any, round_num: int) -> dict[str, Any]:
        if self.evaluate is None:
            return {}
        fn = resolve_function(self.evaluate, "evaluate")
        model = FLModel(params=params, current_round=round_num, total_rounds=self.num_rounds)
        metrics = fn(model, round_num)
        if metrics is None:
            return {}
        if not isinstance(metrics, dict):
            raise RecipeError(f"evaluate(model, round) must return a dict of metrics (or None), got "
                              f"{type(metrics).__name__}")
        return dict(metrics)

    def _keep(self, model: FLModel, round_num: int, kept: list[str]) -> None:
        if not self.keep_models:
            return
        path = collab.workspace / f"global_model_round_{round_num}.collab"
        save_model(model, path)
        kept.append(str(path))
        limit = None if self.keep_models is True else int(self.keep_models)
        while limit is not None and len(kept) > limit:
            Path(kept.pop(0)).unlink(missing_ok=True)

    @collab.main
    def run(self) -> FLModel:
        params, start = initial_params(self.initial_model)
        sites = sorted(collab.clients.names)
        history = []
        kept: list[str] = []
        metrics: dict[str, float] = {}
        for r in range(start, self.num_rounds):
            targets = sites
            if self.clients_per_round is not None and self.clients_per_round < len(sites):
                targets = sorted(random.Random(self.seed * 100_003 + r).sample(sites, self.clients_per_round))
            task = FLModel(params=params, current_round=r + 1, total_rounds=self.num_rounds, start_round=start)
            group = collab.clients(targets=targets, min_responses=self.min_responses)
            results = group.execute(fl_model=task)
            for site, err in results.failures.items():
                log.warning("round %d: %s failed: %s", r + 1, site, err.cause)
            params, metrics = weighted_average(list(results), base=params)
            evaluated = self._evaluate(params, r + 1)
            entry: dict[str, Any] = {"round": r + 1, "sites": sorted(results.sites), **metrics}
            if self.evaluate is not None:
                entry["evaluate"] = evaluated
            history.append(entry)
            log.info("round %d/%d: %d site(s) %s", r + 1, self.num_rounds, len(results), format_metrics(metrics))
            shown = dict(metrics, **{f"eval_{k}": v for k, v in evaluated.items()})
            report_round(r + 1, self.num_rounds, shown, sites=len(results))
            model = FLModel(params=params, metrics=metrics, current_round=r + 1, total_rounds=self.num_rounds)
            save_model(model, collab.workspace / MODEL_FILE)
            self._keep(model, r + 1, kept)
            _log_round(r + 1, metrics, evaluated)
        collab.clients.stop()
        meta: dict[str, Any] = {"history": history, "global_model": str(collab.workspace / MODEL_FILE)}
        if self.keep_models:
            meta["models"] = kept
        return FLModel(params=params, metrics=metrics, current_round=self.num_rounds, total_rounds=self.num_rounds,
                       meta=meta)


def _log_round(round_num: int, metrics: dict[str, float], evaluated: dict[str, Any]) -> None:
    """The round's aggregated (and evaluated) metrics to the job's trackers, when it has any."""
    from ..context import current

    if not current().job.tracking:
        return
    from .. import tracking

    for prefix, values in (("global", metrics), ("global/eval", evaluated)):
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                tracking.emit({"tool": "flare", "op": "scalar", "tag": f"{prefix}/{key}", "value": value,
                               "step": round_num})


class FedAvgRecipe(RecipeBase):
    """Federated averaging with a Client API training script.

    ``FedAvgRecipe(name="fedavg", min_clients=5, num_rounds=10, train_script="train.py",
    model=SimpleModel())``. Each round the global model goes to every site (or to
    ``clients_per_round`` sites drawn at random), the results are averaged weighted by
    ``meta["num_samples"]``, and the global model is saved to ``global_model.collab`` in the
    server's workspace. ``model`` gives the starting weights (its ``state_dict()``); resume an
    interrupted run with ``initial_model=<that file>`` instead.

    ``evaluate=fn`` evaluates the global model on the server after every round:
    ``fn(model: FLModel, round: int) -> dict`` of metrics (a module-level function, so an exported
    job can import it); they show in the console's round line (as ``eval_<name>``), in
    ``meta["history"][i]["evaluate"]`` and in tracking (``global/eval/<name>``).
    ``keep_models=True`` also keeps every round's global model as
    ``global_model_round_<N>.collab`` (an integer keeps the last N), listed in ``meta["models"]``.

    The result is an ``FLModel`` with the final params and ``meta["history"]``.
    """

    def __init__(self, name: str, min_clients: int = 1, num_rounds: int = 1, train_script: str | None = None,
                 model: Any = None, initial_model: str | Path | None = None, clients_per_round: int | None = None,
                 min_responses: int | None = None, seed: int = 0, evaluate: Any = None,
                 keep_models: bool | int = False, **options: Any):
        if train_script is None and options.get("client") is None:
            raise RecipeError("FedAvgRecipe needs train_script= (a Client API script)")
        super().__init__(name, min_clients, train_script=train_script, **options)
        self.num_rounds = check_rounds(num_rounds)
        if clients_per_round is not None and (not isinstance(clients_per_round, int) or clients_per_round < 1):
            raise RecipeError(f"clients_per_round must be an integer >= 1, got {clients_per_round!r}")
        if clients_per_round is not None and clients_per_round < min_clients:
            raise RecipeError(f"clients_per_round={clients_per_round} is below min_clients={min_clients}")
        if min_responses is not None and clients_per_round is not None and min_responses > clients_per_round:
            raise RecipeError(f"min_responses={min_responses} exceeds clients_per_round={clients_per_round}")
        if initial_model is not None:
            path = Path(initial_model).resolve()
            if not path.is_file():
                raise RecipeError(f"initial_model {str(initial_model)!r} is not a file; pass the {MODEL_FILE} "
                                  f"of an earlier run")
            initial_model = str(path)
        elif model is not None:
            initial_model = model_file(model)  # the run starts from exactly these weights
        self.initial_model = initial_model
        self.clients_per_round = clients_per_round
        self.min_responses = min_responses
        self.seed = seed
        if evaluate is not None and not callable(evaluate):
            raise RecipeError(f"evaluate= takes a function fn(model, round) -> metrics, got {type(evaluate).__name__}")
        if isinstance(keep_models, bool) or keep_models is None:
            keep_models = bool(keep_models)
        elif not isinstance(keep_models, int) or keep_models < 1:
            raise RecipeError(f"keep_models must be True, False or an integer >= 1 (keep the last N), "
                              f"got {keep_models!r}")
        self.evaluate = evaluate
        self.keep_models = keep_models

    def make_server(self) -> FedAvgServer:
        return FedAvgServer(self.num_rounds, self.initial_model, self.clients_per_round, self.min_responses, self.seed,
                            self.evaluate, self.keep_models)
