"""Model and data shared by both steps of the migration."""

import zlib

import torch
import torch.nn as nn

TRUE_W = torch.tensor([[2.0, 1.0, -1.0, 0.5, 0.0, -2.0, 1.5, 0.25, -0.5, 3.0]])


class SimpleModel(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(10, 1)

    def forward(self, x):
        return self.fc(x)


def site_data(site_name):
    seed = zlib.crc32(site_name.encode())
    g = torch.Generator().manual_seed(seed)
    n = 40 + seed % 40
    x = torch.randn(n, 10, generator=g)
    return x, x @ TRUE_W.T


def local_train(model, x, y, epochs=10, lr=0.1):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(epochs):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
    return loss.item()


def weighted_avg(pairs):
    """pairs: [(state_dict, num_samples)]"""
    total = sum(n for _, n in pairs)
    return {k: sum(w[k] * (n / total) for w, n in pairs) for k in pairs[0][0]}
