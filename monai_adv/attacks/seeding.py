# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Per-sample random streams, so that an attack's result for a sample depends only on the sample and the seed.

A sample's stream is keyed by a hash of its content (not its position in the batch), the attack's seed and
a stream number (e.g. the restart index). Running the same sample alone or inside any batch, at any position,
draws the same random numbers on a given device.

Keys are computed where the batch lives: a CPU batch is hashed on the host (BLAKE2b of each sample's bytes); a
batch on an accelerator is hashed on the device by exact integer arithmetic, so that only a few bytes per sample
cross to the host instead of the whole batch. The two hashes differ, so the same sample gets different streams
on the CPU and on a GPU (as it would anyway: CPU and CUDA generators draw different numbers from one seed); on
one device, it gets the same stream in any batch.
"""

from __future__ import annotations

import hashlib
from typing import List, Optional, Sequence

import torch

__all__ = ["sample_keys", "device_hashes", "resolve_seed", "sample_generators"]

_PRIME = 2**31 - 1  # every product below stays under 2**62, every per-sample sum of them under 2**63
#: (first, second, third) multipliers of the position hash of each of the two device hash components
_MIXERS = ((0x2C1B3C6D, 0x297A2D39, 0x3A8F05C5), (0x1B873593, 0x0F2A9C47, 0x2545F491))
_WORDS_AT_ONCE = 2**22  # 16-bit words hashed per round (bounds each int64 buffer at 32 MB)


def sample_keys(x: torch.Tensor) -> List[bytes]:
    """A content digest per sample of the batch ``x`` (N, ...): BLAKE2b of its bytes for a CPU tensor, an exact
    integer hash computed on the device for a tensor elsewhere (see the module)."""
    x = x.detach()
    if x.device.type != "cpu":
        return _device_keys(x)
    flat = x.contiguous().flatten(1)
    as_bytes = flat.view(torch.uint8).numpy()
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in as_bytes]


def _position_multipliers(positions: torch.Tensor, mixers: Sequence[int]) -> torch.Tensor:
    """A multiplier in [1, _PRIME - 1] per position, mixed non-linearly (products mod the prime and xor-shifts),
    so that no linear pattern of differences between two samples cancels out."""
    a, b, c = mixers
    m = (positions + 1) * a % _PRIME
    m = (m ^ (m >> 15)) * b % _PRIME
    m = (m ^ (m >> 13)) * c % _PRIME
    return m % (_PRIME - 1) + 1


def device_hashes(x: torch.Tensor) -> torch.Tensor:
    """Per sample of ``x`` (N, ...), two 62-bit hashes (N, 2) int64 of its bytes, computed on x's device.

    The bytes are read as 16-bit words ``w_j`` (every floating dtype has an even size); component k is
    ``sum_j (w_j * m_k(j) mod p)`` with p = 2^31 - 1 and position multipliers ``m_k(j)`` in [1, p - 1]. Integer
    products, remainders and sums are exact and their order does not matter, so the result is the same on every
    device and for every batch holding the sample; two samples that differ in one word always differ.
    """
    n = x.shape[0]
    words = x.contiguous().reshape(n, -1).view(torch.int16).reshape(n, -1)
    length = words.shape[1]
    out = torch.zeros((n, len(_MIXERS)), dtype=torch.int64, device=x.device)
    per_round = max(1, _WORDS_AT_ONCE // max(n, 1))
    for start in range(0, length, per_round):
        chunk = words[:, start : start + per_round].to(torch.int64) & 0xFFFF
        positions = torch.arange(start, start + chunk.shape[1], dtype=torch.int64, device=x.device)
        for k, mixers in enumerate(_MIXERS):
            terms = chunk * _position_multipliers(positions, mixers) % _PRIME
            out[:, k] += terms.sum(dim=1)
    return out


def _device_keys(x: torch.Tensor) -> List[bytes]:
    described = f"{x.dtype}{tuple(x.shape[1:])}".encode()
    keys = []
    for row in device_hashes(x).tolist():  # the one copy to the host: 16 bytes per sample
        material = described + b"".join(value.to_bytes(8, "little", signed=True) for value in row)
        keys.append(hashlib.blake2b(material, digest_size=16).digest())
    return keys


def resolve_seed(seed: Optional[int]) -> int:
    """The attack seed, or a fresh one from PyTorch's global generator when ``seed`` is None."""
    if seed is None:
        return int(torch.randint(0, 2**62, (1,)).item())
    return int(seed)


def sample_generators(keys: Sequence[bytes], seed: int, stream: int, device: torch.device) -> List[torch.Generator]:
    """One seeded ``torch.Generator`` on ``device`` per sample key, for the given seed and stream number."""
    generators = []
    for key in keys:
        digest = hashlib.blake2b(key + seed.to_bytes(16, "little", signed=True) + stream.to_bytes(8, "little"))
        generator = torch.Generator(device=device)
        generator.manual_seed(int.from_bytes(digest.digest()[:8], "little") & (2**63 - 1))
        generators.append(generator)
    return generators
