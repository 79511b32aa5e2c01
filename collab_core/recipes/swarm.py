"""SwarmRecipe: peer-to-peer aggregation. The server only keeps time; the sites train locally and
average each other's models through client-to-client calls -- no central aggregation."""

from __future__ import annotations

import logging
from typing import Any

from ..api import collab
from ..errors import RecipeError
from ..fl_model import FLModel
from ..loading import job_script
from ..progress import report_round
from ..recipe import RecipeBase
from .common import check_rounds, weighted_average

log = logging.getLogger("collab.recipes.swarm")


class SwarmClient:
    """A site of a swarm: trains with its Client API script, then averages with its peers."""

    def __init__(self, train_script: str, script_args: str | list[str] = "", command: str | None = None,
                 subprocess_timeout: float = 600.0):
        self.train_script = job_script(train_script)  # built from a deployed job: its code folder only
        self.script_args = script_args
        self.command = command
        self.subprocess_timeout = subprocess_timeout
        self._inner: Any = None
        self._model: FLModel | None = None    # this site's current model (the last average)
        self._trained: FLModel | None = None  # this round's locally trained model (what peers get)

    def _trainer(self) -> Any:
        if self._inner is None:
            if self.command:
                from collab_torchrun.client import SubprocessClient

                self._inner = SubprocessClient(self.command, self.subprocess_timeout, train_script=self.train_script,
                                               script_args=self.script_args)
            else:
                from ..bridge import ScriptClient

                self._inner = ScriptClient(self.train_script, self.script_args)
        return self._inner

    def make_client_app(self, site_name: str) -> SwarmClient:
        return SwarmClient(self.train_script, self.script_args, self.command, self.subprocess_timeout)

    def __deepcopy__(self, memo: dict) -> SwarmClient:
        return self.make_client_app("")

    def collab_export_args(self) -> dict[str, Any]:
        from pathlib import Path

        return {"train_script": Path(self.train_script).name, "script_args": self.script_args,
                "command": self.command, "subprocess_timeout": self.subprocess_timeout}

    def collab_export_files(self) -> dict:
        from ..bridge import ScriptClient

        return ScriptClient(self.train_script).collab_export_files()

    @collab.init
    def _start(self) -> None:
        start = getattr(self._trainer(), "_start", None)
        if start is not None:
            start()

    @collab.publish
    def swarm_train(self, round_num: int, total_rounds: int) -> dict[str, Any]:
        """Train locally from this site's current model."""
        params = self._model.params if self._model is not None else None
        self._trained = self._trainer().execute(FLModel(params=params, current_round=round_num, total_rounds=total_rounds))
        self._model = self._trained
        return dict(self._trained.metrics or {})

    @collab.publish
    def swarm_model(self, trained: bool = True) -> FLModel | None:
        """This site's model of the round as trained locally (what peers average), or with
        ``trained=False`` its current model (after averaging)."""
        return self._trained if trained else self._model

    @collab.publish
    def swarm_aggregate(self, min_peers: int | None = None) -> int:
        """Average this round's trained models -- this site's and its peers', fetched directly
        from them -- into this site's current model. Peers are asked for their *trained* model, so
        the result does not depend on which peer averaged first."""
        if self._trained is None:
            raise RecipeError(f"{collab.site_name} has no model to aggregate: swarm_train() first")
        peers = collab.other_clients(min_responses=min_peers).swarm_model()
        models = [(collab.site_name, self._trained)] + [(s, m) for s, m in peers if m is not None]
        params, metrics = weighted_average(models)
        self._model = FLModel(params=params, metrics=metrics, meta=dict(self._trained.meta))
        return len(models)

    @collab.final
    def _finish(self) -> None:
        inner = self._inner
        if inner is not None:
            inner.stop()
            inner._finish()


class SwarmServer:
    """Keeps time: train everywhere, then aggregate everywhere (peer to peer); returns one site's
    final model (every site holds the same average)."""

    def __init__(self, num_rounds: int, min_peers: int | None = None):
        self.num_rounds = num_rounds
        self.min_peers = min_peers

    @collab.main
    def run(self) -> FLModel:
        history = []
        for r in range(self.num_rounds):
            trained = collab.clients.swarm_train(r + 1, self.num_rounds)
            sizes = collab.clients.swarm_aggregate(self.min_peers)
            history.append({"round": r + 1, "metrics": dict(trained), "models_averaged": dict(sizes)})
            report_round(r + 1, self.num_rounds, _mean_metrics(dict(trained)), sites=len(trained))
        first = sorted(collab.clients.names)[0]
        final = collab.clients[first].swarm_model(trained=False)
        final.meta = {"history": history, "from": first}
        return final


class SwarmRecipe(RecipeBase):
    """Swarm learning: sites average their models peer to peer, with no central aggregation.

    ``SwarmRecipe(name="swarm", min_clients=3, num_rounds=3, train_script="train.py")``. Sites train with the script and average their models with each
    other through client-to-client calls (relayed, never aggregated, by the server)."""

    def __init__(self, name: str, min_clients: int = 2, num_rounds: int = 1, train_script: str | None = None,
                 script_args: str | list[str] = "", min_peers: int | None = None, launch_external_process: bool = False,
                 command: str | None = None, subprocess_timeout: float = 600.0, **options: Any):
        if train_script is None:
            raise RecipeError("SwarmRecipe needs train_script= (a Client API script)")
        if min_clients < 2:
            raise RecipeError("a swarm needs min_clients >= 2 (peers to average with)")
        from ..bridge import resolve_script
        from ..recipe import _caller_dir

        super().__init__(name, min_clients, **options)
        if launch_external_process:
            from ..registry import check_required_plugins

            check_required_plugins(["collab-torchrun>=0.1"])
            self.required_plugins = tuple(dict.fromkeys((*self.required_plugins, "collab-torchrun>=0.1")))
            if not command:
                raise RecipeError("launch_external_process=True needs command=")
        self.num_rounds = check_rounds(num_rounds)
        self.min_peers = min_peers
        self.client = SwarmClient(str(resolve_script(train_script, _caller_dir())), script_args,
                                  command if launch_external_process else None, subprocess_timeout)

    def make_server(self) -> SwarmServer:
        return SwarmServer(self.num_rounds, self.min_peers)


def _mean_metrics(per_site: dict[str, Any]) -> dict[str, float]:
    """The mean over sites of each numeric metric the sites reported."""
    sums: dict[str, list[float]] = {}
    for metrics in per_site.values():
        for key, value in (metrics or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                sums.setdefault(key, []).append(float(value))
    return {k: sum(v) / len(v) for k, v in sums.items()}
