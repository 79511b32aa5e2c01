"""A DDP training script with the Client API (a plain training script that receives the model, trains and sends it back), on CPU with gloo.

Every rank runs this file. Every rank receives each task; rank 0 loads the global weights and
broadcasts them, all ranks train their shard with DDP, and only rank 0 sends the result.
On GPUs, use the "nccl" backend and move the model to the rank's device.
"""

import os
import zlib

import torch
import torch.distributed as dist
import torch.nn as nn
from model import SimpleModel
from torch.nn.parallel import DistributedDataParallel as DDP

import collab_core.client as flare
from collab_core import FLModel

TRUE_W = torch.tensor([[1.0, 2.0, -1.0, 0.5, 0.0, -0.5, 1.5, -2.0, 0.25, 1.0]])


def main():
    backend = "nccl" if torch.cuda.is_available() and os.environ.get("COLLAB_DDP_BACKEND") != "gloo" else "gloo"
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    flare.init(rank=str(rank))
    device = torch.device(f"cuda:{rank % torch.cuda.device_count()}") if backend == "nccl" else torch.device("cpu")

    torch.manual_seed(0)
    net = SimpleModel().to(device)
    ddp_model = DDP(net, device_ids=[device.index] if device.type == "cuda" else None)  # wrap once

    site = flare.get_site_name()
    g = torch.Generator().manual_seed(zlib.crc32(site.encode()))
    x_all = torch.randn(128, 10, generator=g)
    y_all = x_all @ TRUE_W.T
    x, y = x_all[rank::world].to(device), y_all[rank::world].to(device)  # this rank's shard

    while flare.is_running():
        input_model = flare.receive()
        if input_model is None:
            break
        if rank == 0 and input_model.params:
            net.load_state_dict(input_model.params)
        for param in net.parameters():
            dist.broadcast(param.data, src=0)
        opt = torch.optim.SGD(ddp_model.parameters(), lr=0.1)
        for _ in range(20):
            opt.zero_grad()
            loss = nn.functional.mse_loss(ddp_model(x), y)
            loss.backward()
            opt.step()
        if rank == 0:
            state = {k: v.cpu() for k, v in net.state_dict().items()}
            flare.send(FLModel(params=state, metrics={"loss": loss.item()},
                               meta={"num_samples": len(x_all), "world_size": world}))

    dist.destroy_process_group()


if __name__ == "__main__":
    main()
