# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Per-sample random streams, so that an attack's result for a sample depends only on the sample and the seed.

A sample's stream is keyed by a hash of its content (not its position in the batch), the attack's seed and
a stream number (e.g. the restart index). Running the same sample alone or inside any batch, at any position,
draws the same random numbers on a given device.
"""

from __future__ import annotations

import hashlib
from typing import List, Optional, Sequence

import torch

__all__ = ["sample_keys", "resolve_seed", "sample_generators"]


def sample_keys(x: torch.Tensor) -> List[bytes]:
    """A content digest per sample of the batch ``x`` (N, ...)."""
    flat = x.detach().to("cpu").contiguous().flatten(1)
    as_bytes = flat.view(torch.uint8).numpy()
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in as_bytes]


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
