"""TRADES (Zhang et al., "Theoretically Principled Trade-off between Robustness and Accuracy",
ICML 2019), following the authors' official `trades_loss`.

    loss = CE(f(x), y) + β · (1/N) Σₙ KL(p(x) ‖ p(x_adv))

written in torch's argument order as `kl_div(log p(x_adv), p(x), reduction="sum") / N` — the
official code's `KLDivLoss(size_average=False)(log_softmax(f(x_adv)), softmax(f(x))) / batch`,
which PITFALLS writes KL(f(x_adv) ‖ f(x)). The natural branch p(x) is NOT detached in the outer
loss. The inner attack maximizes the same KL from x + 0.001·N(0, 1) with signed steps projected
onto the ε-ball ∩ [0, 1], in eval mode, against a fixed (detached) p(x).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from ..registry import METHODS, Options
from ..spec.types import Eps, Number
from ..metrics.base import evaluation_mode
from .base import Method, warmed_eps


class TradesOptions(Options):
    """Defaults are the official MNIST setting (ε 0.3, 40 steps of 0.01, β 1); CIFAR-10 uses
    ε 0.031, step 0.007, 10 steps, β 6."""

    eps: Eps = 0.3
    step_size: Number = Field(0.01, gt=0)
    steps: int = Field(40, ge=0)
    beta: float = Field(1.0, ge=0)
    init_std: float = Field(0.001, ge=0)
    # Not in Zhang et al.: ε ramps up linearly over the stage's first epochs (0 = off).
    eps_warmup_epochs: int = Field(0, ge=0)


def robust_kl(logits_adv: torch.Tensor, logits_nat: torch.Tensor) -> torch.Tensor:
    """(1/N) Σₙ Σₖ p_nat log(p_nat / p_adv), the official TRADES robust term (batch-mean)."""
    return F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits_nat, dim=1),
                    reduction="sum") / logits_nat.shape[0]


def trades_attack(model, x: torch.Tensor, eps: float, step_size: float, steps: int,
                  init_std: float = 0.001, generator: torch.Generator | None = None) -> torch.Tensor:
    """The official inner maximization of KL(p(x) ‖ p(x')) over the ℓ∞ ε-ball."""
    x = x.detach()
    if eps == 0:
        return x
    with evaluation_mode(model), torch.enable_grad():
        with torch.no_grad():
            p_nat = F.softmax(model(x), dim=1)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x_adv = x + init_std * noise
        for _ in range(steps):
            x_adv = x_adv.detach().requires_grad_(True)
            kl = F.kl_div(F.log_softmax(model(x_adv), dim=1), p_nat, reduction="sum")
            g = torch.autograd.grad(kl, x_adv)[0]
            x_adv = x_adv.detach() + step_size * g.sign()
            x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
    return x_adv.detach().clamp(0.0, 1.0)


def trades_loss(model, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor, beta: float):
    """(total, natural CE, robust KL, natural logits) with gradients through both branches."""
    logits_nat = model(x)
    logits_adv = model(x_adv)
    nat = F.cross_entropy(logits_nat, y)
    rob = robust_kl(logits_adv, logits_nat)
    return nat + beta * rob, nat, rob, logits_nat


@METHODS.register("trades", TradesOptions)
class Trades(Method):
    """TRADES (Zhang et al., ICML 2019): CE(f(x), y) + β·KL between clean and adversarial
    predictions, the adversary maximizing that KL (official implementation's loss)."""

    def __init__(self, options, info=None):
        super().__init__(options, info)
        self.current_eps = float(options.eps)

    def on_epoch_start(self, model, state) -> None:
        self.current_eps = warmed_eps(self.options.eps, self.options.eps_warmup_epochs, state.stage_epoch)

    def loss(self, model, x, y, state):
        o = self.options
        x_adv = trades_attack(model, x, self.current_eps, o.step_size, o.steps, o.init_std, state.generator)
        loss, nat, rob, logits = trades_loss(model, x, y, x_adv, o.beta)
        return loss, {"train_acc": (logits.argmax(1) == y).float().mean().detach(),
                      "trades.natural": nat.detach(), "trades.robust": rob.detach()}

    def epoch_log(self):
        return {"method.eps": self.current_eps, "method.beta": float(self.options.beta)}
