"""The site's half of split learning, as a Client API script: forward a batch, send the
activations; receive their gradient, finish backpropagation locally."""

import zlib

import torch
from model import BottomModel

import collab_core.client as flare
from collab_core import FLModel

flare.init()
site = flare.get_site_name()
torch.manual_seed(0)
bottom = BottomModel()
opt = torch.optim.SGD(bottom.parameters(), lr=0.05)
g = torch.Generator().manual_seed(zlib.crc32(site.encode()))
x = torch.randn(256, 10, generator=g)
y = (x[:, :3].sum(dim=1, keepdim=True) > 0).float() * 2 - 1   # labels stay here too (sent with activations)
batch = 0
acts = None
while flare.is_running():
    task = flare.receive()
    if task is None:
        break
    if task.meta["phase"] == "forward":
        i = (batch * 32) % len(x)
        xb, yb = x[i:i + 32], y[i:i + 32]
        opt.zero_grad()
        acts = bottom(xb)
        flare.send(FLModel(params={"activations": acts.detach(), "labels": yb}, meta={"num_samples": len(xb)}))
    else:  # backward
        acts.backward(task.params["grad"])
        opt.step()
        batch += 1
        flare.send(FLModel(metrics={"batches": batch}))
