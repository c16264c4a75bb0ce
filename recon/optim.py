"""Generic optimisation for the engines: a minimal Adam for small parameter sets, and the
monitored stage loop (`run_stage`) that nvdiffrec's stages share.

Why not `torch.optim.Adam`: constructing any torch optimiser imports `torch._dynamo`, which
costs 5-12 s on our 2-core CPU hosts, a noticeable share of a 180 s per-case budget. The update
is the textbook one (Kingma & Ba) with bias correction; no weight decay, no amsgrad.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypedDict

import torch

from recon.errors import ConvergenceFailed
from recon.hooks import Hooks


class _Group(TypedDict):
    params: list[torch.Tensor]
    lr: float


class Adam:
    """Adam over parameter groups `[{"params": [tensor, ...], "lr": float}, ...]`."""

    def __init__(self, groups: list[dict], betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.groups: list[_Group] = [{"params": list(g["params"]), "lr": float(g["lr"])} for g in groups]
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


@dataclass(frozen=True)
class StageLimits:
    """When a stage stops: every `check_every` iterations the mean loss of the window must fall by
    at least `tolerance` (relative) or the stage has converged; a loss above `divergence_factor`
    x the first one, or a non-finite loss, is a failure."""

    check_every: int
    tolerance: float
    divergence_factor: float


class StageMonitor:
    """Divergence, convergence and early stopping for one stage, fed one loss per iteration."""

    def __init__(self, stage: str, limits: StageLimits, model: str) -> None:
        self.stage, self.limits, self.model = stage, limits, model
        self.first: float | None = None
        self.window: list[float] = []
        self.previous: float | None = None
        self.best = math.inf
        self.lowest = math.inf  # lowest loss after the first iteration

    def update(self, iteration: int, loss: float) -> bool:
        """Record `loss`; True when the stage has converged. Raises on divergence."""
        if not math.isfinite(loss):
            raise ConvergenceFailed(
                f"{self.model} diverged: loss is {loss} at iteration {iteration} of stage {self.stage}",
                stage=self.stage, iteration=iteration,
            )
        if self.first is None:
            self.first = loss
        else:
            self.lowest = min(self.lowest, loss)
        factor = self.limits.divergence_factor
        if iteration >= 2 and loss > factor * self.first:
            raise ConvergenceFailed(
                f"{self.model} diverged: loss {loss:.4g} is above {factor}x "
                f"its start {self.first:.4g} (stage {self.stage}, iteration {iteration})",
                stage=self.stage, iteration=iteration, loss=loss, start=self.first,
            )
        self.window.append(loss)
        if len(self.window) < self.limits.check_every:
            return False
        mean = sum(self.window) / len(self.window)
        self.window = []
        self.best = min(self.best, mean)
        converged = self.previous is not None and (self.previous - mean) < self.limits.tolerance * self.previous
        self.previous = mean
        return converged

    def require_improvement(self, iterations: int) -> None:
        """MODEL_CONVERGENCE_FAILED unless some iteration after the first had a lower loss (judged
        once the stage ran two check intervals: Adam's first steps may raise it briefly)."""
        if iterations < 2 * self.limits.check_every:
            return
        if self.first is not None and self.lowest >= self.first:
            raise ConvergenceFailed(
                f"{self.model} did not improve in stage {self.stage}: loss stayed at or above "
                f"{self.first:.4g}", stage=self.stage, start=self.first,
            )


def run_stage(
    name: str, iterations: int, loss_fn: Callable[[], torch.Tensor], opt: Adam, hooks: Hooks,
    progress: tuple[float, float], limits: StageLimits, stats: dict[str, Any], *, model: str,
    deadline: float = math.inf, require_improvement: bool = True,
) -> int:
    """The loop every optimisation stage shares: cancellation and progress every `check_every`
    iterations, divergence/convergence monitoring, Adam step; a stage past `deadline` stops as if
    converged (recorded in stats["stopped_by_time_budget"]). Appends the stage's summary to
    stats["stages"]; returns its iterations."""
    monitor = StageMonitor(name, limits, model)
    iteration = 0
    began = time.perf_counter()
    for iteration in range(1, iterations + 1):
        if (iteration - 1) % limits.check_every == 0:
            hooks.check()
            frac = (iteration - 1) / iterations
            hooks.progress(progress[0] + frac * (progress[1] - progress[0]),
                           f"{model} {name}: iteration {iteration}/{iterations}")
        opt.zero_grad()
        loss = loss_fn()
        if monitor.update(iteration, float(loss.detach())):
            break
        if time.perf_counter() > deadline:
            stats.setdefault("stopped_by_time_budget", []).append(name)
            break
        loss.backward()
        opt.step()
    if require_improvement:  # off where the caller judges the stage itself (nvdiffrec's guard)
        monitor.require_improvement(iteration)
    stats.setdefault("stages", []).append(
        {"stage": name, "iterations": iteration, "loss_start": monitor.first,
         "loss_end": monitor.previous if monitor.previous is not None else monitor.first,
         "seconds": round(time.perf_counter() - began, 2)}
    )
    return iteration
