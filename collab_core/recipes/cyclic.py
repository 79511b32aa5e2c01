"""CyclicRecipe: the model travels from site to site, round-robin; each site trains it in turn."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..api import collab
from ..errors import RecipeError
from ..fl_model import FLModel
from ..progress import report_round
from ..recipe import RecipeBase
from .common import MODEL_FILE, ModelFiles, check_rounds, initial_params, model_file, save_model

log = logging.getLogger("collab.recipes.cyclic")


class CyclicServer(ModelFiles):
    """Each round, pass the model through every site in order; a site that fails is skipped
    (the model goes on from the last good one) unless no site succeeded in the round."""

    def __init__(self, num_rounds: int, initial_model: str | None = None):
        self.num_rounds = num_rounds
        self.initial_model = initial_model

    @collab.main
    def run(self) -> FLModel:
        params, start = initial_params(self.initial_model)
        order = sorted(collab.clients.names)
        visits = []
        metrics: dict[str, Any] = {}
        for r in range(start, self.num_rounds):
            succeeded = 0
            for site in order:
                task = FLModel(params=params, current_round=r + 1, total_rounds=self.num_rounds, meta={"site": site})
                try:
                    result = collab.clients[site].execute(fl_model=task)
                except Exception as exc:
                    log.warning("round %d: %s failed, passing the model on: %s", r + 1, site, exc)
                    continue
                params, metrics = result.params, dict(result.metrics or {})
                succeeded += 1
                visits.append({"round": r + 1, "site": site, **metrics})
            if not succeeded:
                raise RecipeError(f"round {r + 1}: every site failed; stopping")
            report_round(r + 1, self.num_rounds, metrics, sites=succeeded)
            save_model(FLModel(params=params, metrics=metrics, current_round=r + 1, total_rounds=self.num_rounds),
                       collab.workspace / MODEL_FILE)
        collab.clients.stop()
        return FLModel(params=params, metrics=metrics, current_round=self.num_rounds,
                       meta={"visits": visits, "global_model": str(collab.workspace / MODEL_FILE)})


class CyclicRecipe(RecipeBase):
    """Cyclic weight transfer: the model visits the sites in turn, each training it further.

    ``CyclicRecipe(name="cyclic", min_clients=3, num_rounds=2, train_script="train.py",
    model=SimpleModel())``. Each round the model visits every site in
    name order and each site trains it further; the result is the final model with the visit log
    in ``meta["visits"]``."""

    def __init__(self, name: str, min_clients: int = 1, num_rounds: int = 1, train_script: str | None = None,
                 model: Any = None, initial_model: str | Path | None = None, **options: Any):
        if train_script is None and options.get("client") is None:
            raise RecipeError("CyclicRecipe needs train_script= (a Client API script)")
        super().__init__(name, min_clients, train_script=train_script, **options)
        self.num_rounds = check_rounds(num_rounds)
        self.initial_model = str(Path(initial_model).resolve()) if initial_model is not None else None
        if self.initial_model is not None and not Path(self.initial_model).is_file():
            raise RecipeError(f"initial_model {str(initial_model)!r} is not a file")
        if self.initial_model is None and model is not None:
            self.initial_model = model_file(model)

    def make_server(self) -> CyclicServer:
        return CyclicServer(self.num_rounds, self.initial_model)
