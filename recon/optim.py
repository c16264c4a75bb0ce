"""A minimal Adam for the engines' small parameter sets.

Why not `torch.optim.Adam`: constructing any torch optimiser imports `torch._dynamo`, which
costs 5-12 s on our 2-core CPU hosts, a noticeable share of a 180 s per-case budget. The update
is the textbook one (Kingma & Ba) with bias correction; no weight decay, no amsgrad.
"""

from __future__ import annotations

import torch


class Adam:
    """Adam over parameter groups `[{"params": [tensor, ...], "lr": float}, ...]`."""

    def __init__(self, groups: list[dict], betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.groups = [{"params": list(g["params"]), "lr": float(g["lr"])} for g in groups]
        self.betas, self.eps, self.steps = betas, eps, 0
        self.state: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def zero_grad(self) -> None:
        for group in self.groups:
            for p in group["params"]:
                p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1**self.steps, 1 - b2**self.steps
        for group in self.groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                m, v = self.state.setdefault(id(p), (torch.zeros_like(p), torch.zeros_like(p)))
                m.mul_(b1).add_(p.grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                denom = (v / c2).sqrt_().add_(self.eps)
                p.addcdiv_(m, denom, value=-group["lr"] / c1)
