"""Teacher targets over prototypes for the DINO and iBOT losses: centering or Sinkhorn-Knopp.

Both self-distillation losses turn the EMA head's prototype scores into a sharp target distribution;
without centering (or the Sinkhorn balancing) the head collapses onto one prototype.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from distill.config import CENTERINGS



@torch.no_grad()
def sinkhorn_knopp(logits: torch.Tensor, temperature: float, iterations: int = 3) -> torch.Tensor:
    """(N, K) scores -> (N, K) assignments with near-uniform prototype usage (rows sum to 1)."""
    q = torch.exp((logits.float() - logits.float().max()) / temperature).t()  # (K, N)
    q /= q.sum()
    k, n = q.shape
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True)
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= n
    return (q * n).t()


class PrototypeTargets(nn.Module):
    """Centred, sharpened softmax of teacher scores; keeps the running centre as a buffer."""

    def __init__(self, num_prototypes: int, centering: str = "center", momentum: float = 0.9):
        super().__init__()
        if centering not in CENTERINGS:
            raise ValueError(f"centering {centering!r}; expected one of {CENTERINGS}")
        self.centering, self.momentum = centering, momentum
        self.register_buffer("center", torch.zeros(1, num_prototypes))

    @torch.no_grad()
    def forward(self, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
        """teacher_logits (N, K) -> target probabilities (N, K); updates the centre in training mode."""
        if self.centering == "sinkhorn":
            return sinkhorn_knopp(teacher_logits, temperature)
        probs = torch.softmax((teacher_logits.float() - self.center) / temperature, dim=-1)
        if self.training:
            self.center.mul_(self.momentum).add_(teacher_logits.float().mean(0, keepdim=True), alpha=1 - self.momentum)
        return probs


def cross_entropy_to_targets(student_logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-row H(targets, softmax(student / T)): (N, K), (N, K) -> (N,)."""
    return -(targets * torch.log_softmax(student_logits.float() / temperature, dim=-1)).sum(-1)
