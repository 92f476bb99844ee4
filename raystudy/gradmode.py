"""Gradients with respect to the inputs only: what attacks and input-gradient metrics need."""

from __future__ import annotations

import contextlib

from torch import nn


@contextlib.contextmanager
def input_grad_only(model: nn.Module):
    """Attacks need gradients w.r.t. inputs only. Freezing parameters skips their
    gradients (faster), leaves `.grad` of a trained model untouched, and avoids escnn's
    error on a second parameter-gradient backward in eval mode (see PITFALLS)."""
    params = [p for p in model.parameters() if p.requires_grad]
    was_training = model.training
    model.eval()
    for p in params:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p in params:
            p.requires_grad_(True)
        model.train(was_training)
