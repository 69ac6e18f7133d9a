"""Storage forms for dense teacher targets: plain half precision, per-token int8, or a PCA basis.

A g/14 patch grid at 448 px is 3.1 MB per image in fp16, so dense targets dominate a cache.
CLS and register tokens are small and always stored plainly; only the patch grid is compressed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from common.errors import UserError
from common.types import ImageTokens, StoredTokens

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def storage_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise UserError(f"--dtype {name!r} is not supported; expected one of {', '.join(DTYPES)}")
    return DTYPES[name]


@dataclass(frozen=True)
class Compression:
    """`none`, `int8` (per-token symmetric scale) or `pca` with `components` kept dimensions."""

    kind: str = "none"
    components: int = 0

    @classmethod
    def parse(cls, spec: str) -> "Compression":
        if spec in ("none", "int8"):
            return cls(spec)
        if spec.startswith("pca:") and spec[4:].isdigit() and int(spec[4:]) > 0:
            return cls("pca", int(spec[4:]))
        raise UserError(f"--compress {spec!r} is not supported; expected none, int8 or pca:N with N > 0")

    @property
    def spec(self) -> str:
        return f"pca:{self.components}" if self.kind == "pca" else self.kind


def quantize_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-token int8: |dequantised - x| <= scale / 2 = max|token| / 254 per element."""
    x = x.float()
    scale = x.abs().amax(dim=-1, keepdim=True).clamp_min(1e-12) / 127.0
    q = torch.round(x / scale).clamp_(-127, 127).to(torch.int8)
    return q, scale.squeeze(-1)


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale.float().unsqueeze(-1)


@dataclass
class PcaBasis:
    """Mean (D,) and orthonormal rows `components` (N, D), fitted in float64 on teacher tokens."""

    mean: torch.Tensor
    components: torch.Tensor
    explained: float  # fraction of the fitting tokens' variance the N components keep
    # (components, mean) copied to each other device a batch was decoded on (`decode`)
    _copies: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def fit(cls, tokens: torch.Tensor, n: int) -> "PcaBasis":
        x = tokens.reshape(-1, tokens.shape[-1]).double()
        if n > x.shape[-1]:
            raise UserError(f"--compress pca:{n} keeps more components than the teacher width {x.shape[-1]}")
        mean = x.mean(0)
        xc = x - mean
        cov = xc.T @ xc / max(1, x.shape[0] - 1)
        eigvals, eigvecs = torch.linalg.eigh(cov)  # ascending
        order = torch.argsort(eigvals, descending=True)[:n]
        components = eigvecs[:, order].T
        # Eigenvector signs are arbitrary; fix them so a refit gives byte-identical files.
        signs = torch.sign(components[torch.arange(n), components.abs().argmax(1)])
        components = components * signs[:, None]
        total = eigvals.clamp_min(0).sum().item()
        explained = eigvals[order].clamp_min(0).sum().item() / total if total > 0 else 1.0
        return cls(mean.float(), components.float(), float(explained))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) @ self.components.T

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        components, mean = self._on(codes.device)
        return codes.float() @ components + mean

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The basis on `device`, copied there once (a cached run decodes each batch where it arrives); the fitted
        tensors stay where they are, for `encode` and `tensors`."""
        if device == self.components.device:
            return self.components, self.mean
        if device not in self._copies:
            self._copies[device] = (self.components.to(device), self.mean.to(device))
        return self._copies[device]

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean.contiguous(), "components": self.components.contiguous()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], explained: float) -> "PcaBasis":
        return cls(tensors["mean"].float(), tensors["components"].float(), explained)


@dataclass
class PatchCodec:
    """Turns a patch grid (n, h, w, D) into the tensors of a shard and back."""

    compression: Compression
    dtype: torch.dtype
    basis: PcaBasis | None = None

    def encode(self, patches: torch.Tensor) -> dict[str, torch.Tensor]:
        kind = self.compression.kind
        if kind == "int8":
            q, scale = quantize_int8(patches)
            return {"patches.int8": q, "patches.scale": scale}
        if kind == "pca":
            return {"patches.pca": self.basis.encode(patches).to(self.dtype)}
        return {"patches": patches.to(self.dtype)}

    def decode(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        kind = self.compression.kind
        if kind == "int8":
            return dequantize_int8(tensors["patches.int8"], tensors["patches.scale"])
        if kind == "pca":
            return self.basis.decode(tensors["patches.pca"])
        return tensors["patches"].float()

    def tokens(self, stored: StoredTokens) -> ImageTokens:
        """The float32 tokens of stored rows (one image's or a batch's), on their device."""
        return ImageTokens(stored.cls.float(), stored.registers.float(), self.decode(stored.patches))

    @property
    def keys(self) -> tuple[str, ...]:
        return {"int8": ("patches.int8", "patches.scale"), "pca": ("patches.pca",)}.get(
            self.compression.kind, ("patches",))
