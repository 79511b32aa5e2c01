"""``secure=True`` in SimEnv: accepted and a no-op (there is no network and no relay to protect
against); the call and its result are exactly those of the same call without it."""

from __future__ import annotations

import numpy as np

from collab_core import CollabCallError, CollabRecipe, collab
from collab_sim import SimEnv


class Peer:
    @collab.publish
    def scale(self, arr, factor=1.0):
        return {"arr": arr * factor, "caller": collab.caller, "by": collab.site_name}

    @collab.publish
    def fail(self):
        raise ValueError("no data on " + collab.site_name)

    @collab.publish
    def ask(self):
        arr = np.arange(6.0).reshape(2, 3)
        out = {"secure": collab.clients["site-2"](secure=True).scale(arr, factor=2.0),
               "plain": collab.clients["site-2"].scale(arr, factor=2.0),
               "group": dict(collab.other_clients(secure=True).scale(arr))}
        try:
            collab.clients["site-2"](secure=True).fail()
        except CollabCallError as exc:
            out["error"] = str(exc)
        return out


class Main:
    @collab.main
    def run(self):
        return collab.clients["site-1"].ask()


def test_secure_calls_run_unchanged_in_simenv():
    recipe = CollabRecipe(job_name="secure-sim", server=Main(), client=Peer(), min_clients=3)
    run = recipe.execute(SimEnv(num_clients=3))
    assert run.status == "finished", run.error
    r = run.result
    assert np.array_equal(r["secure"]["arr"], r["plain"]["arr"])
    assert r["secure"]["caller"] == r["plain"]["caller"] == "site-1"
    assert sorted(r["group"]) == ["site-2", "site-3"]
    assert all(v["caller"] == "site-1" for v in r["group"].values())
    assert "ValueError: no data on site-2" in r["error"]
