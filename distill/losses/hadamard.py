"""Orthonormal Hadamard matrices for PHI-S: kron(Sylvester 2^k, Paley I of order q + 1) / sqrt(n).

The construction actually used: the smallest k such that n = 2^k * m with m = 1 or m - 1 a prime q = 3
(mod 4); Paley I builds the order-(q + 1) matrix as I + S, S the skew-symmetric Jacobsthal matrix of the
quadratic residues mod q bordered by ones. It covers the widths of the common teachers: 768 = 2 * 384
(q = 383), 1024 = 2^10, 1152 (q = 1151), 1536 = 4 * 384 (q = 383), and every power of two. Another
Hadamard matrix of the same order (RADIO's, say) differs from this one by a rotation.
"""
from __future__ import annotations

import torch


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % p for p in range(2, int(n**0.5) + 1))


def _paley(q: int) -> torch.Tensor:
    """Paley construction I: a Hadamard matrix of order q + 1 for a prime q = 3 (mod 4)."""
    residues = {(x * x) % q for x in range(1, q)}
    chi = torch.tensor([0.0] + [1.0 if a in residues else -1.0 for a in range(1, q)], dtype=torch.float64)
    idx = torch.arange(q)
    jacobsthal = chi[(idx[None, :] - idx[:, None]) % q]
    s = torch.zeros(q + 1, q + 1, dtype=torch.float64)
    s[0, 1:], s[1:, 0], s[1:, 1:] = 1.0, -1.0, jacobsthal
    return s + torch.eye(q + 1, dtype=torch.float64)


def hadamard(n: int) -> torch.Tensor | None:
    """(n, n) float64 with H @ H.T = I and every |entry| = 1/sqrt(n); None when not constructible here."""
    power = 1
    while n % power == 0:
        m = n // power
        if m == 1 or (_is_prime(m - 1) and (m - 1) % 4 == 3):
            h = torch.ones(1, 1, dtype=torch.float64) if m == 1 else _paley(m - 1)
            sylvester = torch.ones(1, 1, dtype=torch.float64)
            while sylvester.shape[0] < power:
                sylvester = torch.cat([torch.cat([sylvester, sylvester], 1), torch.cat([sylvester, -sylvester], 1)])
            return torch.kron(sylvester, h) / n**0.5
        power *= 2
    return None
