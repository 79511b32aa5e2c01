"""``FoxSimulator``: the simulation runner of NVFlare's earlier "Fox" API, so its programs run
with their import lines changed (``from collab_sim import FoxSimulator``).

It is a thin front for a :class:`~collab_core.CollabRecipe` run in :class:`~collab_sim.SimEnv`:
the constructor takes Fox's arguments, the ``set_*_prop``, ``set_*_resource_dirs`` and
``add_*_filters`` calls go to the recipe, and :meth:`FoxSimulator.run` returns main's result
(raising when the job failed, as Fox does).
"""

from __future__ import annotations

import os
from typing import Any

from collab_core import CollabRecipe, RecipeError

from .env import SimEnv

#: the recipe methods a FoxSimulator hands through (Fox's simulator API)
_RECIPE_METHODS = frozenset({
    "set_server_prop", "set_client_prop", "set_per_site_config",
    "set_server_resource_dirs", "set_client_resource_dirs",
    "add_server_outgoing_call_filters", "add_server_incoming_call_filters",
    "add_server_outgoing_result_filters", "add_server_incoming_result_filters",
    "add_client_outgoing_call_filters", "add_client_incoming_call_filters",
    "add_client_outgoing_result_filters", "add_client_incoming_result_filters",
})


def fox_shape(num_clients: Any) -> Any:
    """Fox's ``num_clients``: a count, or ``(height, width)`` -- ``height`` levels below the
    server, every site with ``width`` children -- as collab's per-level counts ``(width,) * height``."""
    if isinstance(num_clients, tuple):
        if len(num_clients) != 2 or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1
                                            for n in num_clients):
            raise RecipeError(f"FoxSimulator num_clients is a count or (height, width) of integers >= 1, "
                              f"got {num_clients!r}")
        height, width = num_clients
        return (width,) * height
    return num_clients


class FoxSimulator:
    """``FoxSimulator(root_dir, experiment_name, server, client, server_objects=, client_objects=,
    max_workers=, num_clients=)``; ``run()`` returns main's result. The run's workspace is
    ``root_dir/experiment_name``."""

    def __init__(self, root_dir: str, experiment_name: str, server: Any, client: Any,
                 server_objects: dict[str, Any] | None = None, client_objects: dict[str, Any] | None = None,
                 max_workers: int = 100, num_clients: int | tuple[int, int] = 2, inprocess: bool = True,
                 run_cmd: str | None = None, training_module: str | None = None,
                 subprocess_timeout: float = 300.0):
        if not inprocess or run_cmd is not None or training_module is not None:
            raise RecipeError(
                "FoxSimulator(inprocess=False, run_cmd=...) is not supported; run the client side in "
                "worker processes with CollabRecipe(..., launch_external_process=True, "
                "command='torchrun --nproc_per_node=N') (collab-torchrun) in SimEnv instead"
            )
        self.root_dir = root_dir
        self.experiment_name = experiment_name
        self.max_workers = max_workers
        self.num_clients = num_clients
        self.recipe = CollabRecipe(job_name=experiment_name, server=server, client=client,
                                   server_objects=server_objects, client_objects=client_objects)

    def __getattr__(self, name: str) -> Any:
        if name in _RECIPE_METHODS:
            return getattr(self.recipe, name)
        raise AttributeError(f"FoxSimulator has no attribute {name!r}")

    def run(self) -> Any:
        env = SimEnv(num_clients=fox_shape(self.num_clients), max_workers=self.max_workers,
                     workspace=os.path.join(self.root_dir, self.experiment_name))
        return self.recipe.execute(env).raise_for_status().result
