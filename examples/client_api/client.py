"""A training script with the Client API: it knows nothing of the server's algorithm.

    python client.py          # outside a job: says how to run it under a recipe
"""

import argparse
import zlib

import torch
import torch.nn as nn
from model import SimpleModel

import collab_core.client as flare
from collab_core import FLModel

TRUE_W = torch.tensor([[1.5, -0.5, 2.0, 0.0, -1.0, 0.75, 3.0, -2.0, 0.5, 1.0]])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=0.1)
    args = parser.parse_args()

    flare.init()
    site = flare.get_site_name()
    g = torch.Generator().manual_seed(zlib.crc32(site.encode()))  # this site's own random stream
    n = 60 + zlib.crc32(site.encode()) % 60
    x = torch.randn(n, 10, generator=g)
    y = x @ TRUE_W.T

    while flare.is_running():
        input_model = flare.receive()
        if input_model is None:
            break
        model = SimpleModel()
        if input_model.params:
            model.load_state_dict(input_model.params)
        else:  # first round: a reproducible start (not torch's global RNG, which in-process sites share)
            with torch.no_grad():
                for p in model.parameters():
                    p.copy_(0.1 * torch.randn(p.shape, generator=g))
        opt = torch.optim.SGD(model.parameters(), lr=args.lr)
        for _ in range(args.epochs):
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()
        flare.log("train/loss", loss.item(), step=input_model.current_round)
        flare.send(FLModel(params=model.state_dict(), metrics={"loss": loss.item()}, meta={"num_samples": n}))


if __name__ == "__main__":
    main()
