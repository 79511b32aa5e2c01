"""Real torchrun groups (2 ranks, gloo on CPU): collectives in calls, a failing rank, a dying rank."""

from __future__ import annotations

import sys
import time

import pytest

from collab_core import CollabCallError, CollabRecipe, collab
from collab_sim import SimEnv

from .test_subprocess import load_module, wait_gone

torch = pytest.importorskip("torch")

DDP_MODULE = """
    import os, time
    import torch
    import torch.distributed as dist
    from collab_core import collab

    @collab.init
    def setup():
        dist.init_process_group("gloo")

    @collab.publish
    def reduce(x):
        t = torch.tensor([float(x * (dist.get_rank() + 1))])
        dist.all_reduce(t)
        return {"sum": t.item(), "rank": dist.get_rank(), "world": dist.get_world_size(), "pid": os.getpid()}

    @collab.publish
    def pids():
        t = torch.tensor([os.getpid()], dtype=torch.int64)
        out = [torch.zeros(1, dtype=torch.int64) for _ in range(dist.get_world_size())]
        dist.all_gather(out, t)
        return [int(p.item()) for p in out]

    @collab.publish
    def fail_on_rank_1():
        dist.barrier()
        if dist.get_rank() == 1:
            raise ArithmeticError("rank 1 diverged")
        return "rank 0 fine"

    @collab.publish
    def rank_1_dies():
        if dist.get_rank() == 1:
            os._exit(13)
        time.sleep(60)  # rank 0 would wait on a collective forever; the site must not

    @collab.final
    def teardown():
        dist.destroy_process_group()
"""


@pytest.fixture
def ddp_module(tmp_path):
    mod = load_module(tmp_path, "tr_ddp_mod", DDP_MODULE)
    yield mod
    sys.modules.pop("tr_ddp_mod", None)


def test_every_rank_runs_the_call_and_rank_0_answers(ddp_module):
    class Main:
        @collab.main
        def run(self):
            pids = collab.clients["site-1"].pids()
            return [dict(collab.clients.reduce(r + 1)) for r in range(2)], pids

    run = CollabRecipe(job_name="ddp", server=Main(), client=ddp_module, min_clients=2, launch_external_process=True,
                       command="torchrun --nproc_per_node=2", subprocess_timeout=120).execute(SimEnv(num_clients=2))
    assert run.status == "finished", run.error
    rounds, pids = run.result
    assert rounds[0]["site-1"]["sum"] == 1 * 1 + 1 * 2 and rounds[1]["site-2"]["sum"] == 2 * 1 + 2 * 2
    assert rounds[0]["site-1"]["rank"] == 0 and rounds[0]["site-1"]["world"] == 2
    assert rounds[0]["site-1"]["pid"] == rounds[1]["site-1"]["pid"]  # reused across calls
    assert len(pids) == 2
    assert wait_gone(pids)


def test_an_exception_on_rank_1_fails_the_call_with_rank_1s_traceback(ddp_module):
    class Main:
        @collab.main
        def run(self):
            with pytest.raises(CollabCallError) as err:
                collab.clients["site-1"].fail_on_rank_1()
            return str(err.value)

    run = CollabRecipe(job_name="ddp", server=Main(), client=ddp_module, launch_external_process=True,
                       command="torchrun --nproc_per_node=2", subprocess_timeout=120).execute(SimEnv(num_clients=1))
    assert run.status == "finished", run.error
    assert "failed on rank 1 of site-1" in run.result and "ArithmeticError: rank 1 diverged" in run.result


def test_a_rank_dying_mid_call_fails_the_call_and_tears_the_group_down(ddp_module):
    class Main:
        @collab.main
        def run(self):
            pids = collab.clients["site-1"].pids()
            t0 = time.monotonic()
            with pytest.raises(CollabCallError) as err:
                collab.clients["site-1"].rank_1_dies()
            return pids, str(err.value), time.monotonic() - t0

    run = CollabRecipe(job_name="ddp", server=Main(), client=ddp_module, launch_external_process=True,
                       command="torchrun --nproc_per_node=2", subprocess_timeout=120).execute(SimEnv(num_clients=1))
    assert run.status == "finished", run.error
    pids, text, elapsed = run.result
    assert "died" in text or "exited with code" in text
    assert elapsed < 30
    assert wait_gone(pids, timeout=15), f"orphaned ranks: {[p for p in pids]}"
