"""A Client API training script that any of the standard recipes can drive."""

import zlib

import torch
import torch.nn as nn
from model import SimpleModel

import collab_core.client as flare
from collab_core import FLModel

TRUE_W = torch.tensor([[1.0, -1.0, 2.0, 0.5, 0.0, -2.0, 1.5, 0.25, -0.5, 3.0]])

flare.init()
site = flare.get_site_name()
g = torch.Generator().manual_seed(zlib.crc32(site.encode()))
n = 48 + zlib.crc32(site.encode()) % 48
x = torch.randn(n, 10, generator=g)
y = x @ TRUE_W.T
while flare.is_running():
    task = flare.receive()
    if task is None:
        break
    torch.manual_seed(0)
    model = SimpleModel()
    if task.params:
        model.load_state_dict(task.params)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(10):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
    flare.send(FLModel(params=model.state_dict(), metrics={"loss": loss.item()}, meta={"num_samples": n}))
