# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Randomized smoothing for classification and multi-label: soundness on models with a known answer, the
false-certification rate, batch independence, shapes, the statistics, and bad input."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from torch import nn

import monai_adv.certify
from monai_adv.certify import ABSTAIN, Certificate, RandomizedSmoothing, SegmentationCertificate
from monai_adv.certify.sampling import plan_calls
from monai_adv.certify.statistics import (
    lower_confidence_bound,
    one_sided_pvalues,
    radius_from_bound,
    reject,
    two_sided_pvalue,
    two_sided_pvalues,
)
from tests.cases import same_snapshot, snapshot
from tests.models import TinyClassifier, TinySegmenter


class Linear(nn.Module):
    """f(x) = [w.x + b > 0] as one logit z = w.x + b, or as the two logits (-z/2, z/2); rows of ``w`` are labels
    when ``multilabel``."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor, logits: int = 2) -> None:
        super().__init__()
        self.register_buffer("w", w)
        self.register_buffer("b", b)
        self.logits = logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x.flatten(1)[:, None, :] * self.w).sum(dim=2) + self.b  # elementwise: tiny products are slow in BLAS
        if self.logits == 2:
            return torch.cat([-z / 2, z / 2], dim=1)
        return z


W = torch.tensor([[3.0, 4.0, 0.0, 0.0]])  # ||w|| = 5; the last two coordinates do not matter
B = torch.tensor([-1.0])


def _points(margins, spare=0.0) -> torch.Tensor:
    """Inputs (N, 1, 4) whose signed distance to the boundary w.x + b = 0 is each of ``margins``."""
    unit = W[0] / W[0].norm()
    base = -B[0] * W[0] / W[0].norm() ** 2  # on the boundary
    x = torch.stack([base + m * unit for m in margins])
    x[:, 3] = spare + torch.arange(len(margins), dtype=torch.float32) / 1000  # distinct samples, same margins
    return x[:, None]


def _exact_radius(x: torch.Tensor) -> torch.Tensor:
    return ((x.flatten(1) @ W.T + B)[:, 0].abs() / W.norm()).double()


def test_certify_imports_only_torch_numpy_scipy_and_the_attack_layer():
    # the attack layer imports neither MONAI nor ignite (tests/test_package.py): neither does this one then
    allowed = {"torch", "numpy", "scipy", "monai_adv.attacks", "monai_adv.certify"}
    allowed |= {"__future__", "dataclasses", "math", "numbers", "typing"}  # the standard library modules it uses
    for path in Path(monai_adv.certify.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            for name in names:
                assert any(name == a or name.startswith(a + ".") for a in allowed), f"{path.name} imports {name}"


# ---- soundness on a linear classifier ---------------------------------------------------------------------------
@pytest.mark.parametrize("logits", [1, 2])
def test_linear_classifier_smoothed_equals_base_and_radius_is_below_exact(logits):
    sigma = 0.5
    x = _points([-1.2, -0.6, -0.2, 0.1, 0.4, 0.9, 1.5])
    rs = RandomizedSmoothing(Linear(W, B, logits), sigma)
    cert = rs.certify(x, n0=100, n=20_000, alpha=0.001)
    base = (x.flatten(1) @ W.T + B)[:, 0] > 0
    certified = cert.prediction != ABSTAIN
    assert bool(certified.all())  # every margin here is certifiable with 20,000 draws
    assert torch.equal(cert.prediction, base.long())
    exact = _exact_radius(x)
    assert bool((cert.radius <= exact).all())
    assert bool((exact - cert.radius < 0.15 * sigma).all())  # and not far below it
    assert torch.equal(rs.predict(x, n=1000, alpha=0.001), base.long())


def test_radius_approaches_the_exact_radius_as_n_grows():
    sigma = 0.25
    x = _points([0.1, 0.3])
    rs = RandomizedSmoothing(Linear(W, B), sigma, batch_size=10_000)
    gaps = []
    for n in (1_000, 10_000, 100_000):
        cert = rs.certify(x, n0=100, n=n, alpha=0.001)
        gap = _exact_radius(x) - cert.radius
        assert bool((gap >= 0).all())
        gaps.append(float(gap.max()))
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < 0.02 * sigma * 4  # within 2% of the noise scale's range at n = 100,000


@pytest.mark.parametrize("logits", [1, 2])
def test_point_on_the_boundary_abstains(logits):
    x = _points([0.0, 0.0, 0.0])
    rs = RandomizedSmoothing(Linear(W, B, logits), 0.5)
    cert = rs.certify(x, n0=100, n=5_000, alpha=0.001)
    assert bool((cert.prediction == ABSTAIN).all())
    assert bool((cert.radius == 0).all())
    assert bool((rs.predict(x, n=5_000, alpha=0.001) == ABSTAIN).all())


# ---- the false-certification rate -------------------------------------------------------------------------------
def _exact_false_rate(p: float, n: int, alpha: float) -> float:
    """P(the Clopper-Pearson lower bound of Binomial(n, p) exceeds p): the rate at which a radius is overstated."""
    k = np.arange(n + 1)
    over = lower_confidence_bound(k, n, alpha) > p
    return float(stats.binom.pmf(k[over], n, p).sum())


def test_false_certification_rate_matches_its_exact_value_below_alpha():
    # 2,000 distinct samples whose top class has probability exactly p under the noise: each is certified with too
    # large a radius exactly when its Clopper-Pearson bound exceeds p
    sigma, n, alpha, p = 0.5, 200, 0.05, 0.8
    margin = sigma * float(stats.norm.ppf(p))
    samples = 2_000
    x = _points([margin] * samples)
    cert = RandomizedSmoothing(Linear(W, B), sigma, seed=7).certify(x, n0=10, n=n, alpha=alpha)
    false = (cert.prediction != 1) & (cert.prediction != ABSTAIN) | (cert.radius > _exact_radius(x) + 1e-9)
    rate = _exact_false_rate(p, n, alpha)
    assert 0.01 < rate <= alpha
    low, high = stats.binom.ppf([1e-4, 1 - 1e-4], samples, rate)
    assert low <= int(false.sum()) <= high


def test_multilabel_false_certification_rate_is_below_alpha_over_all_labels():
    # three labels on orthogonal directions: independent under the noise, each "on" with probability exactly 0.8
    sigma, n, alpha, p, samples = 0.5, 200, 0.15, 0.8, 2_000
    w = torch.eye(4)[:3] * 5.0
    margin = sigma * float(stats.norm.ppf(p))
    x = torch.full((samples, 1, 4), margin)
    x[:, 0, 3] = torch.arange(samples) / samples
    net = Linear(w, torch.zeros(3), logits=1)
    cert = RandomizedSmoothing(net, sigma, task="multilabel", seed=3).certify(x, n0=10, n=n, alpha=alpha)
    assert cert.prediction.shape == (samples, 3)
    wrong = (cert.prediction == 0) | (cert.radius > margin + 1e-9)
    false_samples = int(wrong.any(dim=1).sum())
    per_label = _exact_false_rate(p, n, alpha / 3)  # Bonferroni over the 3 labels
    rate = 1 - (1 - per_label) ** 3
    assert rate <= alpha
    low, high = stats.binom.ppf([1e-4, 1 - 1e-4], samples, rate)
    assert low <= false_samples <= high


def test_multilabel_labels_are_certified_apart():
    # label 0 far on, label 1 far off, label 2 on its boundary: the third abstains, the others are certified
    sigma = 0.5
    w = torch.eye(4)[:3]
    x = torch.tensor([[[1.0, -0.8, 0.0, 0.3]]])
    rs = RandomizedSmoothing(Linear(w, torch.zeros(3), logits=1), sigma, task="multilabel", num_classes=3)
    cert = rs.certify(x, n0=100, n=5_000, alpha=0.001)
    assert cert.prediction.tolist() == [[1, 0, ABSTAIN]]
    assert bool((cert.radius[0, :2] <= torch.tensor([1.0, 0.8], dtype=torch.float64)).all())
    assert cert.radius[0, 2] == 0 and cert.sample_radius.tolist() == [0.0]
    assert rs.predict(x, n=5_000, alpha=0.001).tolist() == [[1, 0, ABSTAIN]]


# ---- batch independence, determinism, chunks --------------------------------------------------------------------
def _classifier(k=3, dims=2, seed=0):
    torch.manual_seed(seed)
    return TinyClassifier(dims, 1, k).eval()


def test_certificate_does_not_depend_on_the_batch_and_is_deterministic():
    net = _classifier()
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    rs = RandomizedSmoothing(net, 2.0, batch_size=128, seed=11)  # large noise: votes spread over the classes
    batch = rs.certify(x, n0=10, n=60)
    alone = rs.certify(x[3:4], n0=10, n=60)
    moved = rs.certify(torch.cat([x[3:4], x[:3]]), n0=10, n=60)
    for field in ("prediction", "radius", "p_lower", "counts"):
        assert torch.equal(getattr(batch, field)[3:4], getattr(alone, field))
        assert torch.equal(getattr(batch, field)[3:4], getattr(moved, field)[:1])
    again = rs.certify(x, n0=10, n=60)
    assert batch.to_rows() == again.to_rows()
    other = RandomizedSmoothing(net, 2.0, batch_size=128, seed=12).certify(x, n0=10, n=60)
    assert not torch.equal(other.counts, batch.counts)
    assert torch.equal(rs.predict(x, n=60)[3:4], rs.predict(x[3:4], n=60))


def test_noise_does_not_depend_on_where_a_piece_sits_in_the_call():
    # odd sizes: a sample's pieces start at unaligned offsets of the call's buffer
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(5, 3)).eval()
    x = torch.randn(4, 1, 5)
    rs = RandomizedSmoothing(net, 3.0, batch_size=23, seed=1)
    batch = rs.certify(x, n0=3, n=7)
    assert bool((batch.counts < 7).any())  # the votes are spread: the counts tell the noise apart
    for i in range(4):
        alone = rs.certify(x[i : i + 1], n0=3, n=7)
        assert torch.equal(alone.counts, batch.counts[i : i + 1])
        assert torch.equal(alone.prediction, batch.prediction[i : i + 1])


def test_calls_hold_at_most_batch_size_copies():
    sizes = []

    class Recorder(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = _classifier()

        def forward(self, x):
            sizes.append(x.shape[0])
            return self.net(x)

    x = torch.rand(3, 1, 8, 8)
    RandomizedSmoothing(Recorder(), 0.25, batch_size=16).certify(x, n0=7, n=40)
    assert max(sizes) <= 16
    assert sum(sizes) == 3 * (7 + 40)
    assert plan_calls(2, 5, 4) == [[(0, 4)], [(0, 1)], [(1, 4)], [(1, 1)]]
    assert plan_calls(3, 2, 5) == [[(0, 2), (1, 2)], [(2, 2)]]


def test_network_is_left_exactly_as_found_and_run_in_eval_mode():
    net = _classifier().train()
    seen = []
    net.register_forward_pre_hook(lambda module, args: seen.append(module.training))
    before = snapshot(net)
    RandomizedSmoothing(net, 0.25, batch_size=32).certify(torch.rand(2, 1, 8, 8), n0=5, n=50)
    assert same_snapshot(before, snapshot(net))
    assert seen and not any(seen)


# ---- shapes over tasks and dims ---------------------------------------------------------------------------------
@settings(max_examples=8)
@given(
    dims=st.integers(1, 3),
    task=st.sampled_from(["multiclass", "binary", "multilabel", "segmentation"]),
    n=st.integers(1, 3),
    draws=st.integers(1, 20),
    seed=st.integers(0, 1000),
)
def test_shapes_over_tasks_and_dims(dims, task, n, draws, seed):
    spatial = {1: (8,), 2: (6, 6), 3: (4, 4, 4)}[dims]
    torch.manual_seed(seed)
    k = {"multiclass": 3, "binary": 1, "multilabel": 4, "segmentation": 3}[task]
    net = TinySegmenter(dims, 2, k) if task == "segmentation" else TinyClassifier(dims, 2, k)
    net.train()
    before = snapshot(net)
    x = torch.randn(n, 2, *spatial)
    # an untrained network's single logits may all fall in [0, 1]: the probability check is tested elsewhere
    rs = RandomizedSmoothing(net, 0.3, task=task, batch_size=17, seed=seed, check_outputs=False)
    cert = rs.certify(x, n0=max(1, draws // 3), n=draws, alpha=0.01)
    pred = rs.predict(x, n=draws, alpha=0.01)
    last = rs.certify(x[-1:], n0=max(1, draws // 3), n=draws, alpha=0.01)  # the last sample alone: the same
    assert torch.equal(last.prediction, cert.prediction[-1:]) and torch.equal(last.counts, cert.counts[-1:])
    assert same_snapshot(before, snapshot(net))
    if task == "segmentation":
        assert isinstance(cert, SegmentationCertificate)
        assert cert.prediction.shape == (n, *spatial) and cert.counts.shape == (n, *spatial)
        assert pred.shape == (n, *spatial) and pred.dtype == torch.long
        assert cert.label_map(0.1).shape == (n, *spatial)
        assert bool(((pred >= ABSTAIN) & (pred < k)).all())
        return
    assert isinstance(cert, Certificate)
    shape = (n, k) if task == "multilabel" else (n,)
    assert cert.prediction.shape == shape and cert.radius.shape == shape and cert.p_lower.shape == shape
    assert pred.shape == shape and pred.dtype == torch.long
    top = 2 if task == "multilabel" else max(k, 2)
    assert bool(((cert.prediction >= ABSTAIN) & (cert.prediction < top)).all())
    abstained = cert.prediction == ABSTAIN
    assert bool((cert.radius[abstained] == 0).all()) and bool((cert.radius[~abstained] > 0).all())
    assert bool(((cert.p_lower >= 0) & (cert.p_lower <= 1)).all())
    json.dumps(cert.to_rows())


def test_empty_batch():
    rs = RandomizedSmoothing(_classifier(), 0.25)
    cert = rs.certify(torch.zeros(0, 1, 8, 8), n0=5, n=10)
    assert len(cert) == 0 and cert.certified_accuracy(torch.zeros(0), [0.0, 0.5]) == [0.0, 0.0]
    assert rs.predict(torch.zeros(0, 1, 8, 8), n=10).shape == (0,)


# ---- curves and rows --------------------------------------------------------------------------------------------
def _certificate(prediction, radius, task="classification"):
    prediction = torch.tensor(prediction)
    radius = torch.tensor(radius, dtype=torch.float64)
    return Certificate(prediction, radius, radius.clone(), prediction.abs(), 0.5, 10, 100, 0.001, task, 3)


def test_certified_accuracy_by_hand():
    cert = _certificate([0, 2, ABSTAIN, 1, 1], [0.3, 0.1, 0.0, 0.5, 0.2])
    y = torch.tensor([0, 2, 1, 1, 0])
    # correct: samples 0, 1, 3 (radii 0.3, 0.1, 0.5); sample 4 is wrong, sample 2 abstained
    assert cert.certified_accuracy(y, [0.0, 0.1, 0.2, 0.3, 0.5, 0.6]) == [0.6, 0.6, 0.4, 0.4, 0.2, 0.0]
    rows = cert.to_rows(y)
    assert rows[2] == {
        "index": 2,
        "prediction": -1,
        "radius": 0.0,
        "p_lower": 0.0,
        "count": 1,
        "abstained": True,
        "label": 1,
        "correct": False,
    }
    json.dumps(rows)


def test_multilabel_sample_counts_at_its_smallest_radius():
    cert = _certificate([[1, 0], [1, ABSTAIN], [0, 0]], [[0.4, 0.2], [0.5, 0.0], [0.3, 0.3]], "multilabel")
    y = torch.tensor([[1, 0], [1, 1], [0, 1]])
    # sample 0: both right, smallest radius 0.2; sample 1: one label abstains; sample 2: label 1 wrong
    assert cert.certified_accuracy(y, [0.0, 0.2, 0.25]) == pytest.approx([1 / 3, 1 / 3, 0.0])
    rows = cert.to_rows(y)
    assert rows[0]["radius_min"] == 0.2 and rows[1]["abstained"] and not rows[2]["correct"]
    json.dumps(rows)


# ---- statistics against scipy's reference calls -----------------------------------------------------------------
@settings(max_examples=60)
@given(n=st.integers(1, 500), frac=st.floats(0, 1), alpha=st.sampled_from([0.001, 0.01, 0.05, 0.2]))
def test_bounds_and_tests_agree_with_binomtest(n, frac, alpha):
    k = int(round(frac * n))
    reference = stats.binomtest(k, n, 0.5)
    low = reference.proportion_ci(confidence_level=1 - 2 * alpha, method="exact").low  # one side of a 2-sided CI
    assert lower_confidence_bound(np.array([k]), n, alpha)[0] == pytest.approx(low, abs=1e-12)
    assert two_sided_pvalues(np.array([k]), np.array([n - k]))[0] == pytest.approx(reference.pvalue, rel=1e-9)
    assert two_sided_pvalue(k, n - k) == reference.pvalue
    tau = 0.3 + 0.6 * frac
    greater = stats.binomtest(k, n, tau, alternative="greater").pvalue
    assert one_sided_pvalues(np.array([k]), n, tau)[0] == pytest.approx(greater, rel=1e-9, abs=1e-300)
    # the test rejects p <= tau at level alpha exactly when tau is below the bound
    bound = lower_confidence_bound(np.array([k]), n, alpha)[0]
    if abs(bound - tau) > 1e-9:
        assert (greater <= alpha) == (tau < bound)


def test_radius_from_bound():
    radius = radius_from_bound(np.array([0.2, 0.5, 0.8413447460685429, 1.0]), 0.5)
    assert radius[:2].tolist() == [0.0, 0.0]
    assert radius[2] == pytest.approx(0.5)
    assert radius[3] == np.inf


def _holm_by_hand(p, alpha):
    out = np.zeros(len(p), dtype=bool)
    for j, i in enumerate(np.argsort(p, kind="stable")):
        if p[i] > alpha / (len(p) - j):
            break
        out[i] = True
    return out


@settings(max_examples=60)
@given(
    pvalues=st.lists(st.floats(0, 1), min_size=1, max_size=40).map(np.array),
    alpha=st.sampled_from([0.001, 0.05, 0.5]),
)
def test_holm_rejects_what_bonferroni_does_and_matches_the_step_down(pvalues, alpha):
    holm = reject(pvalues[None], alpha, "holm")[0]
    bonferroni = reject(pvalues[None], alpha, "bonferroni")[0]
    assert bool((holm >= bonferroni).all())
    assert holm.tolist() == _holm_by_hand(pvalues, alpha).tolist()
    assert bonferroni.tolist() == (pvalues <= alpha / len(pvalues)).tolist()


# ---- bad input ----------------------------------------------------------------------------------------------------
class Softmax(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x).softmax(dim=1)


class Sigmoid(Softmax):
    def forward(self, x):
        return self.net(x).sigmoid()


def _nan_network():
    net = _classifier()
    with torch.no_grad():
        net.head.weight.fill_(float("nan"))
    return net


X = torch.rand(2, 1, 8, 8)
NET = _classifier()
BAD_CONSTRUCTION = [
    ({"sigma": 0.0}, ValueError, "sigma"),
    ({"sigma": -1.0}, ValueError, "sigma"),
    ({"sigma": float("inf")}, ValueError, "sigma"),
    ({"sigma": float("nan")}, ValueError, "sigma"),
    ({"sigma": "0.5"}, TypeError, "sigma"),
    ({"batch_size": 0}, ValueError, "batch_size"),
    ({"task": "regression"}, ValueError, "task"),
    ({"correction": "fdr"}, ValueError, "correction"),
    ({"num_classes": 0}, ValueError, "num_classes"),
    ({"seed": 0.5}, TypeError, "seed"),
]


@pytest.mark.parametrize("kwargs, error, name", BAD_CONSTRUCTION)
def test_bad_construction(kwargs, error, name):
    kwargs = {"sigma": 0.25, **kwargs}
    with pytest.raises(error, match=name):
        RandomizedSmoothing(NET, **kwargs)


def test_network_must_be_callable():
    with pytest.raises(TypeError, match="network"):
        RandomizedSmoothing("model.pt", 0.25)


BAD_CALLS = [
    (lambda rs: rs.certify(X, n0=0, n=10), ValueError, "n0"),
    (lambda rs: rs.certify(X, n0=5, n=0), ValueError, "`n`"),
    (lambda rs: rs.certify(X, n0=50, n=10), ValueError, "n0"),
    (lambda rs: rs.certify(X, n0=5, n=10, alpha=0.0), ValueError, "alpha"),
    (lambda rs: rs.certify(X, n0=5, n=10, alpha=1.0), ValueError, "alpha"),
    (lambda rs: rs.certify(X, n0=5, n=10, alpha=-0.1), ValueError, "alpha"),
    (lambda rs: rs.certify(X, n0=5, n=10, correction="none"), ValueError, "correction"),
    (lambda rs: rs.predict(X, n=0), ValueError, "`n`"),
    (lambda rs: rs.predict(X, n=10, alpha=2.0), ValueError, "alpha"),
    (lambda rs: rs.certify(X.long(), n0=5, n=10), TypeError, "`x`"),
    (lambda rs: rs.certify(X.numpy(), n0=5, n=10), TypeError, "`x`"),
    (lambda rs: rs.certify(X[0, 0], n0=5, n=10), ValueError, "`x`"),
    (lambda rs: rs.certify(X[:, :, None, None], n0=5, n=10), ValueError, "`x`"),
    (lambda rs: rs.certify(torch.where(X > 0.5, float("nan"), X), n0=5, n=10), ValueError, "`x`"),
]


@pytest.mark.parametrize("call, error, name", BAD_CALLS)
def test_bad_call(call, error, name):
    with pytest.raises(error, match=name):
        call(RandomizedSmoothing(NET, 0.25, batch_size=16))


@pytest.mark.parametrize(
    "network, kwargs, match",
    [
        (Softmax(_classifier()), {}, "probabilities"),
        (Sigmoid(_classifier(k=1)), {}, "probabilities"),
        (Sigmoid(_classifier(k=4)), {"task": "multilabel"}, "probabilities"),
        (_nan_network(), {}, "NaN or Inf"),
        (_classifier(k=3), {"num_classes": 4}, "num_classes"),
        (_classifier(k=1), {"num_classes": 3}, "num_classes"),
        (_classifier(k=3), {"task": "binary"}, "binary"),
        (_classifier(k=3), {"task": "segmentation"}, "segmentation"),
        (TinySegmenter(2, 1, 2), {"task": "multilabel"}, "multilabel"),
        (lambda x: (x.flatten(1)[:, :2],), {}, "tensor of logits"),
        (lambda x: x.flatten(1)[:, :2].long(), {}, "floating-point"),
        (lambda x: x.flatten(1)[:1, :2], {}, "batch of"),
    ],
)
def test_bad_network_outputs(network, kwargs, match):
    rs = RandomizedSmoothing(network, 0.25, batch_size=16, **kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        rs.certify(X, n0=5, n=10)


def test_single_binary_logit_counts_as_two_classes():
    x = _points([-0.5, 0.5])
    cert = RandomizedSmoothing(Linear(W, B, logits=1), 0.25, num_classes=2).certify(x, n0=5, n=20, alpha=0.1)
    assert cert.num_classes == 2 and cert.prediction.tolist() == [0, 1]
    with_check_off = RandomizedSmoothing(Sigmoid(_classifier(k=1)), 0.25, check_outputs=False)
    assert bool((with_check_off.predict(X, n=20) != 0).all())  # sigmoid outputs are all > 0: class 1 or abstain
