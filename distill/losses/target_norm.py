"""Teacher target standardisation: per-channel, or PHI-S (RADIO), per token kind, with denormalise.

Raw teacher features have a few huge channels that dominate an MSE / smooth-L1 loss. Statistics
come from one calibration pass over teacher outputs, accumulated in float64 and summed over
processes, and live in buffers (so `save_state` carries them) and in `target_norm.safetensors`.

- channel: y = (x - mean) / std, channel by channel.
- phi-s:   y = H U^T (x - mean) / alpha, with U the eigenvectors of the teacher covariance, H an
           orthonormal Hadamard matrix (spreads the variance evenly over channels) and alpha the
           square root of the mean eigenvalue: every channel of y has unit variance, and the map is
           a rotation plus one isotropic scale, so cosine geometry is preserved.

Conventions: the covariance is the population covariance (divided by N, not N - 1) of all calibration
tokens of a kind; H is the Sylvester x Paley construction of `distill.losses.hadamard`, which differs from
RADIO's choice of Hadamard matrix by a rotation (any orthonormal H spreads the variance evenly).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from distill.config import TARGET_NORMS
from distill.losses.hadamard import hadamard
from common.atomic import write_atomic
from common.errors import UserError
from common.types import TOKEN_PARTS, ImageTokens


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1]).to(torch.float64)


class TargetNorm(nn.Module):
    def __init__(self, kind: str, width: int):
        super().__init__()
        if kind not in TARGET_NORMS:
            raise UserError(f"target normalisation {kind!r} is unknown; expected one of {', '.join(TARGET_NORMS)}")
        if kind == "phi-s" and hadamard(width) is None:
            raise UserError(f"PHI-S needs a Hadamard matrix of order {width} (teacher width), which is not built in; "
                            "use loss.target_norm=channel")
        self.kind, self.width = kind, width
        for part in TOKEN_PARTS:
            self.register_buffer(f"{part}_mean", torch.zeros(width))
            if kind == "channel":
                self.register_buffer(f"{part}_std", torch.ones(width))
            else:
                self.register_buffer(f"{part}_rotation", torch.eye(width))
                self.register_buffer(f"{part}_alpha", torch.ones(()))
        self.register_buffer("calibrated", torch.zeros((), dtype=torch.bool))

    # ------------------------------------------------------------ statistics

    @torch.no_grad()
    def calibrate(self, batches: Iterable[ImageTokens],
                  reduce_sum: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> None:
        """One pass over teacher outputs; `reduce_sum` sums a tensor over processes."""
        stats: dict = {}
        for tokens in batches:
            self.accumulate(stats, tokens)
        self.finish(stats, reduce_sum)

    @torch.no_grad()
    def accumulate(self, stats: dict, tokens: ImageTokens) -> None:
        """Adds one batch to `stats` (several teachers' statistics are gathered in one pass over the data)."""
        full = self.kind == "phi-s"
        for part in TOKEN_PARTS:
            x = _rows(getattr(tokens, part))
            n, s, m = stats.get(part, (0, 0.0, 0.0))
            stats[part] = (n + x.shape[0], s + x.sum(0), m + (x.T @ x if full else (x * x).sum(0)))

    @torch.no_grad()
    def finish(self, stats: dict, reduce_sum: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> None:
        full = self.kind == "phi-s"
        if not stats:
            raise UserError("no data for the target-normalisation calibration pass")
        for part in TOKEN_PARTS:
            n, s, m = stats[part]
            n = float(reduce_sum(torch.tensor(float(n), dtype=torch.float64, device=s.device)))
            mean = reduce_sum(s) / n
            second = reduce_sum(m) / n
            getattr(self, f"{part}_mean").copy_(mean)
            if not full:
                getattr(self, f"{part}_std").copy_((second - mean**2).clamp(min=1e-12).sqrt())
                continue
            cov = second - torch.outer(mean, mean)
            eigvals, eigvecs = torch.linalg.eigh((cov + cov.T) / 2)
            alpha = eigvals.clamp(min=0).mean().clamp(min=1e-12).sqrt()
            rotation = hadamard(self.width).to(eigvecs.device) @ eigvecs.T
            getattr(self, f"{part}_rotation").copy_(rotation)
            getattr(self, f"{part}_alpha").copy_(alpha)
        self.calibrated.fill_(True)

    # ------------------------------------------------------------ maps

    def _affine(self, part: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Denormalise as x = y @ A.T + mean; returns (A, mean) in float32."""
        mean = getattr(self, f"{part}_mean").float()
        if self.kind == "channel":
            return torch.diag(getattr(self, f"{part}_std").float()), mean
        return (getattr(self, f"{part}_alpha") * getattr(self, f"{part}_rotation").T).float(), mean

    def _normalize_part(self, x: torch.Tensor, part: str) -> torch.Tensor:
        x = x.float() - getattr(self, f"{part}_mean").float()
        if self.kind == "channel":
            return x / getattr(self, f"{part}_std").float()
        return x @ getattr(self, f"{part}_rotation").float().T / getattr(self, f"{part}_alpha").float()

    def normalize(self, tokens: ImageTokens) -> ImageTokens:
        return ImageTokens(*(self._normalize_part(getattr(tokens, p), p) for p in TOKEN_PARTS))

    def denormalize(self, tokens: ImageTokens) -> ImageTokens:
        out = []
        for part in TOKEN_PARTS:
            a, mean = self._affine(part)
            out.append(getattr(tokens, part).float() @ a.T + mean)
        return ImageTokens(*out)

    @torch.no_grad()
    def fold_into(self, layer: nn.Linear, part: str) -> nn.Linear:
        """A copy of `layer` whose output is denormalised: predicting normalised targets -> teacher space."""
        a, mean = self._affine(part)
        folded = nn.Linear(layer.in_features, layer.out_features, bias=True).to(layer.weight.device)
        folded.weight.copy_(a.to(layer.weight.device) @ layer.weight.float())
        bias = layer.bias.float() if layer.bias is not None else torch.zeros(layer.out_features)
        folded.bias.copy_(a.to(bias.device) @ bias + mean.to(bias.device))
        return folded.to(layer.weight.dtype)

    # ------------------------------------------------------------ files

    def save(self, path: str | os.PathLike) -> None:
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        write_atomic(path, lambda tmp: save_file(tensors, tmp, metadata={"kind": self.kind, "width": str(self.width)}))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TargetNorm":
        from safetensors import safe_open

        with safe_open(os.fspath(path), "pt") as f:
            meta = f.metadata() or {}
        if "kind" not in meta or "width" not in meta:
            raise UserError(f"{path} is not a target-normalisation file (no kind/width metadata)")
        norm = cls(meta["kind"], int(meta["width"]))
        norm.load_state_dict(load_file(os.fspath(path)))
        return norm
