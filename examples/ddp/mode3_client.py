"""Mode 3: @collab.publish methods that run inside a torchrun worker group.

Every rank receives every call and runs the method, so dist.init_process_group, dist.broadcast
and DDP inside it work; the site returns rank 0's value, and a failure on any rank fails the call.
"""

import os
import zlib

import torch
import torch.distributed as dist
import torch.nn as nn
from model import SimpleModel
from torch.nn.parallel import DistributedDataParallel as DDP

from collab_core import collab

TRUE_W = torch.tensor([[1.0, 2.0, -1.0, 0.5, 0.0, -0.5, 1.5, -2.0, 0.25, 1.0]])
state = {}


@collab.init
def setup():
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    state["net"] = SimpleModel()
    state["ddp"] = DDP(state["net"])
    rank, world = dist.get_rank(), dist.get_world_size()
    g = torch.Generator().manual_seed(zlib.crc32(collab.site_name.encode()))
    x = torch.randn(128, 10, generator=g)
    state["data"] = (x[rank::world], (x @ TRUE_W.T)[rank::world])


@collab.publish
def train(weights=None):
    net, ddp_model = state["net"], state["ddp"]
    if dist.get_rank() == 0 and weights:
        net.load_state_dict(weights)
    for param in net.parameters():
        dist.broadcast(param.data, src=0)
    x, y = state["data"]
    opt = torch.optim.SGD(ddp_model.parameters(), lr=0.1)
    for _ in range(20):
        opt.zero_grad()
        loss = nn.functional.mse_loss(ddp_model(x), y)
        loss.backward()
        opt.step()
    return net.state_dict(), 128, loss.item(), {"rank": dist.get_rank(), "world": dist.get_world_size(),
                                                 "pid": os.getpid()}


@collab.final
def teardown():
    dist.destroy_process_group()
