"""SplitLearningRecipe: the model is cut in two. Each site runs the bottom part on its own data and
sends activations; the server runs the top part, computes the loss and sends back the gradient
of the activations. Raw data and labels' features never leave a site -- only activations do.

The training script speaks a small protocol over the Client API (see ``examples/split_learning``):

- a task with ``meta["phase"] == "forward"``: run the bottom model on the next batch and send
  ``FLModel(params={"activations": a.detach(), "labels": y}, meta={"num_samples": len(y)})``;
- a task with ``meta["phase"] == "backward"``: ``a.backward(task.params["grad"])``, step the
  optimizer, and send ``FLModel(metrics={...})``.
"""

from __future__ import annotations

import logging
from typing import Any

from ..api import collab
from ..errors import RecipeError
from ..fl_model import FLModel
from ..progress import report_round
from ..recipe import RecipeBase
from .common import (
    ModelFiles,
    build_model,
    check_rounds,
    describe_model,
    initial_params,
    model_file,
)

log = logging.getLogger("collab.recipes.split")

LOSSES = ("mse", "cross_entropy")


class SplitLearningServer(ModelFiles):
    """Owns the top of the model; visits the sites in turn, one batch each per step."""

    def __init__(self, num_rounds: int, server_model: dict, initial_model: str | None = None, lr: float = 0.1,
                 steps_per_round: int = 1, loss: str = "mse"):
        self.num_rounds = num_rounds
        self.server_model = server_model
        self.initial_model = initial_model
        self.lr = lr
        self.steps_per_round = steps_per_round
        self.loss = loss

    @collab.main
    def run(self) -> dict[str, Any]:
        import torch

        head = build_model(self.server_model)
        weights, _ = initial_params(self.initial_model)
        if weights is not None:
            head.load_state_dict(weights)
        opt = torch.optim.SGD(head.parameters(), lr=self.lr)
        loss_fn = torch.nn.functional.mse_loss if self.loss == "mse" else torch.nn.functional.cross_entropy
        losses = []
        for r in range(self.num_rounds):
            round_losses = []
            for _ in range(self.steps_per_round):
                for site in sorted(collab.clients.names):
                    fwd = collab.clients[site].execute(fl_model=FLModel(meta={"phase": "forward"}, current_round=r + 1))
                    acts = fwd.params["activations"].detach().requires_grad_(True)
                    opt.zero_grad()
                    loss = loss_fn(head(acts), fwd.params["labels"])
                    loss.backward()
                    opt.step()
                    collab.clients[site].execute(fl_model=FLModel(params={"grad": acts.grad}, meta={"phase": "backward"},
                                                                  current_round=r + 1))
                    round_losses.append(loss.item())
            losses.append(sum(round_losses) / len(round_losses))
            log.info("round %d: mean loss %.5f", r + 1, losses[-1])
            report_round(r + 1, self.num_rounds, {"loss": losses[-1]}, sites=len(collab.clients.names))
        collab.clients.stop()
        return {"losses": losses, "server_model": head.state_dict()}


class SplitLearningRecipe(RecipeBase):
    """Split learning: sites run the bottom of the model, the server the top; only activations move.

    ``SplitLearningRecipe(name="sl", num_rounds=5, train_script="split_client.py",
    model=TopModel(), min_clients=3)``. ``model`` is the server's part (an ``nn.Module`` whose
    class is importable and whose constructor arguments are stored as attributes)."""

    def __init__(self, name: str, num_rounds: int = 1, train_script: str | None = None, model: Any = None,
                 min_clients: int = 1, lr: float = 0.1, steps_per_round: int = 1, loss: str = "mse", **options: Any):
        if train_script is None:
            raise RecipeError("SplitLearningRecipe needs train_script= (the script with the bottom of the model)")
        if model is None:
            raise RecipeError("SplitLearningRecipe needs model= (the server's part of the model, an nn.Module)")
        if loss not in LOSSES:
            raise RecipeError(f"loss must be one of {LOSSES}, got {loss!r}")
        if not isinstance(lr, (int, float)) or lr <= 0:
            raise RecipeError(f"lr must be a positive number, got {lr!r}")
        super().__init__(name, min_clients, train_script=train_script, **options)
        self.num_rounds = check_rounds(num_rounds)
        self.steps_per_round = check_rounds(steps_per_round)
        self.model = describe_model(model)  # the architecture, rebuilt on the server...
        self.initial_model = model_file(model)  # ...and its starting weights
        self.lr = lr
        self.loss = loss

    def make_server(self) -> SplitLearningServer:
        return SplitLearningServer(self.num_rounds, self.model, self.initial_model, self.lr, self.steps_per_round,
                                   self.loss)
