"""Programs written for NVFlare's earlier "Fox" API run with `from collab_core import collab as fox`:
`@fox.algo` is `@collab.main`, `@fox.collab` is `@collab.publish`."""

from __future__ import annotations

from collab_core import CollabRecipe
from collab_core import collab as fox
from collab_sim import SimEnv


class Trainer:
    def __init__(self):
        self.seen = 0

    @fox.init
    def start(self):
        self.seen = 10

    @fox.collab
    def train(self, x):
        self.seen += 1
        return x + self.seen, fox.site_name, fox.call_info


class Avg:
    @fox.algo
    def run(self):
        return dict(fox.clients.train(1))


def test_fox_decorator_names_run_a_job():
    run = CollabRecipe(job_name="fox", server=Avg(), client=Trainer(), min_clients=2).execute(SimEnv(num_clients=2))
    assert run.status == "finished", run.error
    assert run.result == {s: (12, s, f"{s}:server=>{s}") for s in ("site-1", "site-2")}
