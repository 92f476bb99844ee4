"""Shared test helpers (not fixtures): small trained models for metric tests."""

import torch
import torch.nn.functional as F

from raystudy.registry import MODELS


def train_stdcnn(data, epochs: int = 1, seed: int = 0):
    """The default StdCNN trained with Adam on `data.x_train` (a few seconds on 1,000 digits)."""
    torch.manual_seed(seed)
    entry = MODELS.get("stdcnn_mnist")
    model = entry.obj(entry.schema(), data.info)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(epochs):
        perm = torch.randperm(len(data.x_train))
        for i in range(0, len(perm), 50):
            idx = perm[i:i + 50]
            loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()
