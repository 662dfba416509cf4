# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Host synchronisations per attack step, counted on the CPU by the operations that would wait for a GPU.

An operation whose result the host must read (``.item()``, ``bool(t)``, ``int(t)``, ``.tolist()``, ``nonzero``,
a boolean-mask index, ``masked_select``, ``unique``) makes the host wait for every kernel queued before it on a
GPU. The counter sees them at the dispatcher (and ``tolist``/``numpy`` in Python), on any device, so the count
holds for CUDA runs too. Syncs per step are measured as the difference between two runs of different lengths,
so the once-per-call checks cancel out.
"""

import hashlib
from contextlib import contextmanager

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from monai_adv.attacks import APGD, CW, FAB, PGD, SimBA, Square
from monai_adv.attacks.seeding import device_hashes, sample_keys
from tests.models import TinyClassifier, TinySegmenter

_READ_BACK = {
    "_local_scalar_dense",
    "nonzero",
    "masked_select",
    "_unique",
    "_unique2",
    "unique_dim",
    "unique_consecutive",
}


class _SyncCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in _READ_BACK:
            self.count += 1
        elif name in ("index", "index_put", "index_put_"):  # a boolean mask index runs nonzero inside
            indices = args[1] if len(args) > 1 else ()
            if any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices):
                self.count += 1
        return func(*args, **(kwargs or {}))


@contextmanager
def count_syncs(monkeypatch):
    """Count host synchronisations inside the block."""
    counter = _SyncCounter()
    with monkeypatch.context() as patch:
        for method in ("tolist", "numpy"):
            original = getattr(torch.Tensor, method)

            def counted(self, *args, _original=original, **kwargs):
                counter.count += 1
                return _original(self, *args, **kwargs)

            patch.setattr(torch.Tensor, method, counted)
        with counter:
            yield counter


def test_the_counter_sees_every_kind_of_sync(monkeypatch):
    """The counter must be able to fail the tests below: each of these reads a device value on the host."""
    x = torch.rand(6, 3)
    flags = x[:, 0] > 0.5
    reads = [
        lambda: bool(flags.any()),
        lambda: x.sum().item(),
        lambda: int(flags.sum()),
        lambda: float(x[0, 0]),
        lambda: flags.tolist(),
        lambda: flags.nonzero(),
        lambda: x[flags],
        lambda: x.clone().__setitem__(flags, x[:1].expand(6, 3)[flags]),
        lambda: torch.masked_select(x, flags[:, None]),
        lambda: torch.unique(flags),
    ]
    for read in reads:
        with count_syncs(monkeypatch) as counter:
            read()
        assert counter.count >= 1
    with count_syncs(monkeypatch) as counter:  # and these do not
        torch.where(flags[:, None], x, 0.0).index_select(0, torch.tensor([0, 2])).sum()
        x.clone().index_copy_(0, torch.tensor([1]), x[:1])
        torch.nonzero_static(flags, size=2)
    assert counter.count == 0


def _robust_problem(segmentation: bool = False):
    """A model, a batch labelled with its own predictions and a budget too small to fool any sample: every
    sample runs every step, whatever ``early_stop`` says."""
    torch.manual_seed(0)
    if segmentation:
        model = TinySegmenter(2, 1, 2).eval()
        x = torch.rand(3, 1, 8, 8)
        with torch.no_grad():
            y = model(x).argmax(dim=1, keepdim=True)
    else:
        model = TinyClassifier(2, 1, 4).eval()
        x = torch.rand(3, 1, 8, 8)
        with torch.no_grad():
            y = model(x).argmax(dim=1)
    return model, x, y


def _counted_run(monkeypatch, attack, x, y):
    """Run the attack, counting the host synchronisations of its run proper (``_perturb``: the steps, restarts and
    bookkeeping), not the once-per-call input checks and final budget enforcement around it."""
    counts = []
    run = attack._perturb

    def counted(state):
        with count_syncs(monkeypatch) as counter:
            out = run(state)
        counts.append(counter.count)
        return out

    attack._perturb = counted
    result = attack.perturb(x, y)
    return result, sum(counts)


def _syncs_per_step(monkeypatch, build, lengths, segmentation=False):
    """Host synchronisations per step: the difference between runs of two lengths, over the extra steps."""
    model, x, y = _robust_problem(segmentation)
    counts = []
    for length in lengths:
        result, count = _counted_run(monkeypatch, build(model, length), x, y)
        assert result.success is None or not bool(result.success.any())  # nobody left early: every run did every step
        counts.append(count)
    return (counts[1] - counts[0]) / (lengths[1] - lengths[0])


EPS = 1e-5  # fools nobody


@pytest.mark.parametrize("best_iterate", [True, False])
@pytest.mark.parametrize("random_start", [True, False])
def test_pgd_syncs_only_for_early_exit(monkeypatch, best_iterate, random_start):
    def build(early_stop):
        return lambda model, steps: PGD(
            model,
            eps=EPS,
            steps=steps,
            early_stop=early_stop,
            best_iterate=best_iterate,
            random_start=random_start,
        )

    assert _syncs_per_step(monkeypatch, build(False), (3, 7)) == 0
    assert _syncs_per_step(monkeypatch, build(True), (3, 7)) == 1


def test_pgd_on_segmentation_and_cw(monkeypatch):
    def pgd(early_stop):
        return lambda model, steps: PGD(model, eps=EPS, steps=steps, loss="dice", early_stop=early_stop)

    assert _syncs_per_step(monkeypatch, pgd(False), (2, 5), segmentation=True) == 0
    assert _syncs_per_step(monkeypatch, pgd(True), (2, 5), segmentation=True) == 1
    assert _syncs_per_step(monkeypatch, lambda model, steps: CW(model, eps=EPS, steps=steps), (2, 5)) == 1


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_apgd_syncs_only_for_early_exit(monkeypatch, norm):
    # 10 and 30 steps: the step-size checkpoints (0.22 N, ...) fall at different steps and cost nothing either
    def build(early_stop):
        return lambda model, steps: APGD(model, eps=EPS, steps=steps, norm=norm, early_stop=early_stop)

    assert _syncs_per_step(monkeypatch, build(False), (10, 30)) == 0
    assert _syncs_per_step(monkeypatch, build(True), (10, 30)) == 1


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_fab_syncs_only_for_early_exit(monkeypatch, norm):
    def build(early_stop):
        return lambda model, steps: FAB(model, eps=EPS, steps=steps, norm=norm, target_classes=1, early_stop=early_stop)

    assert _syncs_per_step(monkeypatch, build(False), (3, 7)) == 0
    assert _syncs_per_step(monkeypatch, build(True), (3, 7)) == 1


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_square_syncs_only_for_early_exit(monkeypatch, norm):
    def build(early_stop):
        return lambda model, queries: Square(model, eps=EPS, queries=queries, norm=norm, early_stop=early_stop)

    # 70 queries and more: a second block of per-sample uniforms is drawn (every 64 queries) and costs nothing
    assert _syncs_per_step(monkeypatch, build(False), (20, 90)) == 0
    assert _syncs_per_step(monkeypatch, build(True), (20, 90)) == 1


@pytest.mark.parametrize("basis", ["dct", "pixel"])
def test_simba_syncs_at_most_once_per_model_evaluation(monkeypatch, basis):
    """SimBA's iteration reads which samples are left and which need the second query (a batch whose size is
    the first query's outcome): two per iteration, at most one per model evaluation."""
    model, x, y = _robust_problem()
    rows = []
    for queries in (10, 30):
        calls = []

        def counted(inputs, calls=calls):
            calls.append(inputs.shape[0])
            return model(inputs)

        attack = SimBA(counted, eps=EPS, queries=queries, basis=basis, step=EPS / 2)
        rows.append((_counted_run(monkeypatch, attack, x, y)[1], len(calls)))
    syncs, evaluations = rows[1][0] - rows[0][0], rows[1][1] - rows[0][1]
    assert evaluations > 0 and syncs <= evaluations
    iterations = (30 - 1) - (10 - 1)  # queries - 1 iterations: each tries -q first, then +q where it did not help
    assert syncs <= 2 * iterations


def test_device_hash_is_exact_integer_arithmetic():
    """The device hash of a sample, recomputed with Python integers: same value whatever the batch around it."""
    x = torch.randn(3, 2, 5, dtype=torch.float32)
    hashes = device_hashes(x)
    prime = 2**31 - 1
    from monai_adv.attacks.seeding import _MIXERS

    for i in range(3):
        words = [w & 0xFFFF for w in x[i].contiguous().view(torch.int16).flatten().tolist()]
        for k, (a, b, c) in enumerate(_MIXERS):
            total = 0
            for j, w in enumerate(words):
                m = (j + 1) * a % prime
                m = (m ^ (m >> 15)) * b % prime
                m = (m ^ (m >> 13)) * c % prime
                total += w * (m % (prime - 1) + 1) % prime
            assert int(hashes[i, k]) == total
        assert torch.equal(device_hashes(x[i : i + 1])[0], hashes[i])


def test_device_hash_separates_samples_and_rounds(monkeypatch):
    x = torch.rand(4, 1, 6, 6, dtype=torch.float64)
    x[3] = x[1]
    y = x.clone()
    y[0, 0, 2, 3] = torch.nextafter(y[0, 0, 2, 3], torch.tensor(2.0, dtype=torch.float64))  # one bit
    h, g = device_hashes(x), device_hashes(y)
    assert torch.equal(h[1], h[3]) and not torch.equal(h[0], h[1]) and not torch.equal(h[0], g[0])
    import monai_adv.attacks.seeding as seeding

    monkeypatch.setattr(seeding, "_WORDS_AT_ONCE", 7)  # many rounds: the same sums
    assert torch.equal(seeding.device_hashes(x), h)


def test_cpu_keys_are_the_blake2b_digest_of_the_bytes():
    """On the CPU the keys (hence every random stream, and every stored result) are as they always were."""
    x = torch.rand(2, 1, 4, 4)
    expected = [hashlib.blake2b(x[i].numpy().tobytes(), digest_size=16).digest() for i in range(2)]
    assert sample_keys(x) == expected


def test_device_keys_read_back_only_the_hashes(monkeypatch):
    """Off the CPU, one small read-back per batch (the hashes), never the batch itself."""
    from monai_adv.attacks import seeding

    x = torch.rand(5, 1, 8, 8)
    with count_syncs(monkeypatch) as counter:
        keys = seeding._device_keys(x)
    assert counter.count == 1 and len(set(keys)) == 5
    assert seeding._device_keys(x[2:3]) == keys[2:3]
