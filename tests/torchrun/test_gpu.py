"""NCCL on CUDA: the seed's DDP script with one rank per GPU. Needs a CUDA device; CI has none,
so this test is skipped there (it is run on a GPU machine)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from collab_core import CollabRecipe  # noqa: E402
from collab_sim import SimEnv  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ddp"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (NCCL); CI has none")
def test_ddp_client_api_with_nccl_on_every_gpu(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.delenv("COLLAB_DDP_BACKEND", raising=False)
    from server import FedAvg

    n = torch.cuda.device_count()
    recipe = CollabRecipe(job_name="ddp-nccl", server=FedAvg(num_rounds=2), train_script=str(EXAMPLE / "client.py"),
                          launch_external_process=True, command=f"torchrun --nproc_per_node={n}",
                          subprocess_timeout=300)
    run = recipe.execute(SimEnv(num_clients=1))
    assert run.status == "finished", run.error
    losses = run.result["losses"]
    assert losses[-1] < losses[0]
    sys.modules.pop("server", None)
