"""FedAvgRecipe: weighted federated averaging of a Client API training script."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

from ..api import collab
from ..errors import RecipeError
from ..fl_model import FLModel
from ..recipe import RecipeBase
from .common import (
    MODEL_FILE,
    ModelFiles,
    check_rounds,
    initial_params,
    model_file,
    save_model,
    weighted_average,
)

log = logging.getLogger("collab.recipes.fedavg")


class FedAvgServer(ModelFiles):
    """Scatter the global model, gather the sites' models, average them weighted by
    ``meta["num_samples"]``; save the global model after every round."""

    def __init__(self, num_rounds: int, initial_model: str | None = None, clients_per_round: int | None = None,
                 min_responses: int | None = None, seed: int = 0):
        self.num_rounds = num_rounds
        self.initial_model = initial_model
        self.clients_per_round = clients_per_round
        self.min_responses = min_responses
        self.seed = seed

    @collab.main
    def run(self) -> FLModel:
        params, start = initial_params(self.initial_model)
        sites = sorted(collab.clients.names)
        history = []
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
            history.append({"round": r + 1, "sites": sorted(results.sites), **metrics})
            log.info("round %d/%d: %d site(s) %s", r + 1, self.num_rounds, len(results),
                     " ".join(f"{k}={v:.5g}" for k, v in metrics.items()))
            save_model(FLModel(params=params, metrics=metrics, current_round=r + 1, total_rounds=self.num_rounds),
                       collab.workspace / MODEL_FILE)
            _log_round(r + 1, metrics)
        collab.clients.stop()
        return FLModel(params=params, metrics=metrics, current_round=self.num_rounds, total_rounds=self.num_rounds,
                       meta={"history": history, "global_model": str(collab.workspace / MODEL_FILE)})


def _log_round(round_num: int, metrics: dict[str, float]) -> None:
    """The round's aggregated metrics to the job's trackers, when it has any."""
    from ..context import current

    if not current().job.tracking:
        return
    from .. import tracking

    for key, value in metrics.items():
        tracking.emit({"tool": "flare", "op": "scalar", "tag": f"global/{key}", "value": value, "step": round_num})


class FedAvgRecipe(RecipeBase):
    """Federated averaging with a Client API training script.

    ``FedAvgRecipe(name="fedavg", min_clients=5, num_rounds=10, train_script="train.py",
    model=SimpleModel())``. Each round the global model goes to every site (or to
    ``clients_per_round`` sites drawn at random), the results are averaged weighted by
    ``meta["num_samples"]``, and the global model is saved to ``global_model.collab`` in the
    server's workspace. ``model`` gives the starting weights (its ``state_dict()``); resume an
    interrupted run with ``initial_model=<that file>`` instead.
    The result is an ``FLModel`` with the final params and ``meta["history"]``.
    """

    def __init__(self, name: str, min_clients: int = 1, num_rounds: int = 1, train_script: str | None = None,
                 model: Any = None, initial_model: str | Path | None = None, clients_per_round: int | None = None,
                 min_responses: int | None = None, seed: int = 0, **options: Any):
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

    def make_server(self) -> FedAvgServer:
        return FedAvgServer(self.num_rounds, self.initial_model, self.clients_per_round, self.min_responses, self.seed)
