# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""``max_batch``: a batch attacked in chunks gives exactly the result of the batch attacked at once."""

from typing import Any, Dict

import pytest
import torch
from monai.data import MetaTensor

from monai_adv.attacks import Attack, AttackResult, TransferAttack, attack_arguments, available_attacks, make_attack
from monai_adv.attacks.base import join_results
from tests.models import PerSample, TinyClassifier, TinySegmenter, bars_dataset, train_classifier

N = 7  # with max_batch=3: chunks of 3, 3 and 1


@pytest.fixture(scope="module")
def classifier():
    """A small classifier trained on four bar orientations (so that some samples are fooled, some not), and data."""
    x_train, y_train = bars_dataset(512, seed=0, classes=4)
    torch.manual_seed(0)
    model = train_classifier(TinyClassifier(2, 1, 4), x_train, y_train, epochs=6)
    x, y = bars_dataset(N, seed=3, classes=4)
    g = torch.Generator().manual_seed(1)
    mask = (torch.rand(N, 1, 16, 16, generator=g) > 0.3).float()
    target = (y + 1 + torch.randint(0, 3, (N,), generator=g)) % 4
    return PerSample(model), x, y, mask, target


@pytest.fixture(scope="module")
def segmenter():
    """A 3D segmenter, volumes (N, 1, 6, 6, 6), label maps (N, 1, 6, 6, 6) of its own predictions, a mask."""
    torch.manual_seed(0)
    model = PerSample(TinySegmenter(3, 1, 2).eval())
    g = torch.Generator().manual_seed(2)
    x = torch.rand(N, 1, 6, 6, 6, generator=g)
    with torch.no_grad():
        y = model(x).argmax(dim=1, keepdim=True)
    y[0] = 1 - y[0]  # one sample already fails clean
    mask = torch.zeros_like(x)
    mask[..., 1:5, 1:5, 1:5] = 1
    target = 1 - y
    return model, x, y, mask, target


def assert_same_result(chunked: AttackResult, whole: AttackResult, skip=("seconds",)) -> None:
    """Every field equal, bit for bit; ``details`` too, but for wall-clock times."""
    assert type(chunked.x_adv) is type(whole.x_adv)
    assert torch.equal(chunked.x_adv, whole.x_adv)
    for name in ("success", "loss", "clean_success", "queries"):
        a, b = getattr(chunked, name), getattr(whole, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert a.dtype == b.dtype and torch.equal(a, b), name
    assert chunked.task == whole.task
    assert_same_details(chunked.details, whole.details, skip)


def assert_same_details(a: Dict[str, Any], b: Dict[str, Any], skip) -> None:
    assert list(a) == list(b)
    for key in a:
        if key in skip:
            assert type(a[key]) is type(b[key])
        elif isinstance(a[key], AttackResult):
            assert_same_result(a[key], b[key], skip)
        elif isinstance(a[key], dict):
            assert_same_details(a[key], b[key], skip)
        else:
            assert a[key] == b[key], key


def both(name: str, model, x, y, mask=None, target=None, max_batch: int = 3, **kwargs):
    """The result of the attack built with ``max_batch`` and without, and the batch sizes the model saw with it."""
    sizes = []

    def recording(inputs):
        sizes.append(inputs.shape[0])
        return model(inputs)

    chunked = make_attack(name, recording, max_batch=max_batch, **kwargs).perturb(x, y, mask=mask, target=target)
    whole = make_attack(name, model, **kwargs).perturb(x, y, mask=mask, target=target)
    return chunked, whole, sizes


CLASSIFICATION = [
    ("fgsm", {"eps": 24 / 255, "targeted": True}),
    ("fgsm", {"eps": 24 / 255, "random_start": True, "best_iterate": True}),
    ("pgd", {"eps": 24 / 255, "steps": 5, "targeted": True}),
    ("pgd", {"eps": 12 / 255, "steps": 3, "restarts": 2}),
    ("pgd", {"eps": 24 / 255, "steps": 4, "targeted": "random"}),
    ("pgd_l2", {"eps": 1.5, "steps": 4, "early_stop": False}),
    ("cw", {"eps": 24 / 255, "steps": 4, "targeted": True}),
    ("apgd", {"eps": 24 / 255, "steps": 8, "targeted": True}),
    ("apgd_dlr", {"eps": 16 / 255, "steps": 8, "norm": "L2"}),
    ("apgd_t", {"eps": 24 / 255, "steps": 4, "target_classes": 2}),
    ("fab_t", {"eps": 24 / 255, "steps": 4, "target_classes": 2, "restarts": 2}),
    ("square", {"eps": 24 / 255, "queries": 40, "targeted": True}),
    ("square", {"eps": 1.5, "queries": 40, "norm": "L2"}),
    ("simba", {"eps": 24 / 255, "queries": 40, "targeted": True}),
    ("simba_pixel", {"eps": 24 / 255, "queries": 40, "early_stop": False}),
    ("autoattack", {"eps": 24 / 255, "steps": 4, "queries": 20, "target_classes": 2, "check": False}),
]


@pytest.mark.parametrize("name, kwargs", CLASSIFICATION, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CLASSIFICATION)])
def test_chunks_give_the_result_of_the_whole_batch_2d(classifier, name, kwargs):
    model, x, y, mask, target = classifier
    target = target if kwargs.get("targeted") is True else None
    chunked, whole, sizes = both(name, model, x, y, mask=mask, target=target, **kwargs)
    assert_same_result(chunked, whole)
    assert max(sizes) <= 3  # no model call saw more than max_batch samples


SEGMENTATION = [
    ("fgsm", {"eps": 0.2, "loss": "dice", "early_stop": True}),
    ("pgd", {"eps": 0.25, "steps": 4, "loss": "dice", "targeted": True}),
    ("pgd", {"eps": 0.25, "steps": 4, "loss_in_mask": True}),
    ("apgd", {"eps": 0.25, "steps": 6, "loss": "dice"}),
    ("square", {"eps": 0.25, "queries": 20}),
    ("simba", {"eps": 0.25, "queries": 20}),
    ("autoattack", {"eps": 0.25, "steps": 3, "queries": 10, "check": False}),
]


@pytest.mark.parametrize("name, kwargs", SEGMENTATION, ids=[f"{n}-{i}" for i, (n, _) in enumerate(SEGMENTATION)])
def test_chunks_give_the_result_of_the_whole_batch_3d_segmentation(segmenter, name, kwargs):
    model, x, y, mask, target = segmenter
    target = target if kwargs.get("targeted") is True else None
    chunked, whole, sizes = both(name, model, x, y, mask=mask, target=target, **kwargs)
    assert_same_result(chunked, whole)
    assert max(sizes) <= 3


def test_per_sample_loss_mask_and_shared_mask_are_split_right(segmenter):
    model, x, y, _, _ = segmenter
    loss_mask = torch.zeros(N, 6, 6, 6)
    loss_mask[:, 2:] = 1
    loss_mask[3] = 1 - loss_mask[3]
    shared = torch.zeros(1, 1, 6, 6, 6)
    shared[..., :3] = 1
    for lm in (loss_mask, loss_mask[:, None], loss_mask[:1], loss_mask[0]):
        kwargs = {"eps": 0.25, "steps": 3}
        chunked = make_attack("pgd", model, max_batch=2, **kwargs).perturb(x, y, mask=shared, loss_mask=lm)
        whole = make_attack("pgd", model, **kwargs).perturb(x, y, mask=shared, loss_mask=lm)
        assert_same_result(chunked, whole)


def test_autoattack_details_are_joined(classifier):
    model, x, y, _, _ = classifier
    kwargs = {"eps": 12 / 255, "steps": 4, "queries": 20, "target_classes": 2, "check": False}
    chunked, whole, _ = both("autoattack", model, x, y, max_batch=2, **kwargs)
    details = chunked.details
    assert details["attacks"] == whole.details["attacks"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert len(details["broken_by"]) == N and details["broken_by"] == whole.details["broken_by"]
    assert details["broken_counts"] == whole.details["broken_counts"]
    assert sum(details["broken_counts"].values()) > 1  # samples broken in several chunks: the counts were summed
    assert None in details["broken_by"]  # and some robust ones
    assert set(details["seconds"]) == set(whole.details["seconds"])


def test_transfer_source_result_is_joined(classifier):
    model, x, y, mask, _ = classifier
    torch.manual_seed(1)
    surrogate = PerSample(TinyClassifier(2, 1, 4).eval())
    for source in ("pgd", "autoattack"):
        extra = {"check": False, "steps": 3, "queries": 10} if source == "autoattack" else {"steps": 3}
        kwargs = {"source": source, "surrogate": surrogate, "eps": 24 / 255, "source_kwargs": extra}
        chunked, whole, _ = both("transfer", model, x, y, mask=mask, **kwargs)
        assert_same_result(chunked, whole)
        assert isinstance(chunked.details["source"], AttackResult)
        assert chunked.details["source"].x_adv.shape == x.shape
    built = TransferAttack(model, make_attack("pgd", surrogate, eps=24 / 255, steps=3, max_batch=2))
    assert built.max_batch == 2
    assert_same_result(
        built.perturb(x, y), TransferAttack(model, make_attack("pgd", surrogate, eps=24 / 255, steps=3)).perturb(x, y)
    )


def test_input_type_dtype_and_metadata_are_kept(classifier):
    model, x, y, _, _ = classifier
    meta = MetaTensor(
        x.double(), affine=torch.diag(torch.tensor([2.0, 2.0, 1.0, 1.0])), meta={"filename_or_obj": "a.nii"}
    )
    chunked = make_attack("pgd", model, eps=24 / 255, steps=3, max_batch=3).perturb(meta, y)
    whole = make_attack("pgd", model, eps=24 / 255, steps=3).perturb(meta, y)
    assert isinstance(chunked.x_adv, MetaTensor) and chunked.x_adv.dtype == torch.float64
    assert torch.equal(chunked.x_adv.as_tensor(), whole.x_adv.as_tensor())
    assert chunked.x_adv.meta["filename_or_obj"] == "a.nii" and torch.equal(chunked.x_adv.affine, whole.x_adv.affine)
    out = make_attack("pgd", model, eps=24 / 255, steps=3, max_batch=3)(meta, y)  # __call__ as well
    assert isinstance(out, MetaTensor) and torch.equal(out.as_tensor(), whole.x_adv.as_tensor())


def test_an_unseeded_attack_draws_one_seed_for_all_chunks(classifier):
    model, x, y, _, _ = classifier
    torch.manual_seed(5)
    chunked = make_attack("pgd", model, eps=24 / 255, steps=3, seed=None, max_batch=2).perturb(x, y)
    torch.manual_seed(5)
    whole = make_attack("pgd", model, eps=24 / 255, steps=3, seed=None).perturb(x, y)
    assert_same_result(chunked, whole)


def test_a_small_batch_runs_at_once(classifier):
    model, x, y, _, _ = classifier
    for max_batch in (N, N + 5):
        chunked, whole, sizes = both("pgd", model, x, y, max_batch=max_batch, eps=8 / 255, steps=2)
        assert_same_result(chunked, whole)
        assert max(sizes) == N


def test_bad_labels_are_reported_as_without_max_batch(classifier):
    model, x, y, _, _ = classifier
    for labels in (y[:4], y[0]):
        with pytest.raises(ValueError) as whole:
            make_attack("pgd", model, eps=8 / 255, steps=2)(x, labels)
        with pytest.raises(ValueError) as chunked:
            make_attack("pgd", model, eps=8 / 255, steps=2, max_batch=2)(x, labels)
        assert str(chunked.value) == str(whole.value)


@pytest.mark.parametrize(
    "value, error, message",
    [
        (0, ValueError, "`max_batch` must be an integer >= 1, got 0"),
        (-2, ValueError, "`max_batch` must be an integer >= 1, got -2"),
        (2.5, TypeError, "`max_batch` must be an integer >= 1, got float"),
        (True, TypeError, "`max_batch` must be an integer >= 1, got bool"),
        ("4", TypeError, "`max_batch` must be an integer >= 1, got str"),
    ],
)
def test_max_batch_is_checked(value, error, message):
    with pytest.raises(error, match=message):
        make_attack("pgd", torch.nn.Identity(), max_batch=value)


def test_every_attack_takes_max_batch():
    for name in available_attacks():
        assert "max_batch" in attack_arguments(name), name
    attack = make_attack("square", torch.nn.Identity(), max_batch=4)
    assert attack.max_batch == 4 and attack.settings()["max_batch"] == 4
    assert make_attack("pgd", torch.nn.Identity()).max_batch is None
    assert "max_batch" in (Attack.__init__.__doc__ or "") + (Attack.__doc__ or "")


def test_join_results_rules():
    def part(n, details):
        return AttackResult(
            torch.zeros(n, 1, 2), torch.ones(n, dtype=torch.bool), None, None, "classification", None, details
        )

    joined = join_results(
        [
            part(2, {"broken_by": ["a", None], "counts": {"a": 1}, "seconds": 0.5, "notes": ["x"], "name": "v"}),
            part(
                1, {"broken_by": ["b"], "counts": {"a": 2, "b": 1}, "seconds": 0.25, "notes": ["x", "y"], "name": "v"}
            ),
        ],
        per_sample_details=("broken_by",),
    )
    assert joined.x_adv.shape == (3, 1, 2) and joined.success.tolist() == [True] * 3 and joined.loss is None
    assert joined.details == {
        "broken_by": ["a", None, "b"],
        "counts": {"a": 3, "b": 1},
        "seconds": 0.75,
        "notes": ["x", "y"],
        "name": "v",
    }
