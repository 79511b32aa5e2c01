"""The model of the recipe examples (its class is importable, so recipes can rebuild it anywhere)."""

import torch.nn as nn


class SimpleModel(nn.Module):
    def __init__(self, in_features=10):
        super().__init__()
        self.in_features = in_features
        self.fc = nn.Linear(in_features, 1)

    def forward(self, x):
        return self.fc(x)
