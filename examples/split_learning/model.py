"""The two halves of a split model."""

import torch.nn as nn


class BottomModel(nn.Module):
    """Runs at each site, on its own data."""

    def __init__(self, in_features=10, hidden=16):
        super().__init__()
        self.in_features = in_features
        self.hidden = hidden
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU())

    def forward(self, x):
        return self.net(x)


class TopModel(nn.Module):
    """Runs on the server, on the sites' activations."""

    def __init__(self, hidden=16):
        super().__init__()
        self.hidden = hidden
        self.head = nn.Linear(hidden, 1)

    def forward(self, h):
        return self.head(h)
