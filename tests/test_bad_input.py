# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""Bad input gets a clear error naming the argument and the expected form."""

import pytest
import torch

from monai_adv.attacks import CW, FGSM, PGD, AutoAttack, attack_class, available_attacks, make_attack
from monai_adv.attacks.registry import attack_arguments
from monai_adv.transforms import RandAdversarialPerturb
from tests.models import TinyClassifier, TinySegmenter

torch.manual_seed(0)
CLS = TinyClassifier(2, 1, 3).eval()
BIN = TinyClassifier(2, 1, 1).eval()
SEG = TinySegmenter(2, 1, 3).eval()
X = torch.rand(2, 1, 8, 8)
Y = torch.tensor([0, 2])


def _nan_x():
    x = X.clone()
    x[0, 0, 1, 1] = float("nan")
    return x


def _inf_x():
    x = X.clone()
    x[1, 0, 2, 2] = float("inf")
    return x


# (id, callable, exception, pattern in the message)
CASES = [
    ("nan_in_x", lambda: PGD(CLS)(_nan_x(), Y), ValueError, "`x` contains NaN or Inf"),
    ("inf_in_x", lambda: PGD(CLS)(_inf_x(), Y), ValueError, "`x` contains NaN or Inf"),
    ("negative_eps", lambda: PGD(CLS, eps=-0.1), ValueError, "`eps` must be a finite number >= 0"),
    ("nan_eps", lambda: PGD(CLS, eps=float("nan")), ValueError, "`eps`"),
    ("string_eps", lambda: PGD(CLS, eps="8/255"), TypeError, "`eps` must be a real number"),
    ("zero_alpha", lambda: PGD(CLS, alpha=0.0), ValueError, "`alpha` must be a finite number > 0"),
    ("negative_alpha", lambda: FGSM(CLS, alpha=-1.0), ValueError, "`alpha`"),
    ("zero_steps", lambda: PGD(CLS, steps=0), ValueError, "`steps` must be an integer >= 1"),
    ("float_steps", lambda: CW(CLS, steps=2.5), TypeError, "`steps` must be an integer"),
    ("unknown_norm", lambda: PGD(CLS, norm="L1"), ValueError, '`norm` must be "Linf" or "L2"'),
    ("unknown_loss", lambda: PGD(CLS, loss="hinge"), ValueError, "`loss` must be one of"),
    (
        "label_out_of_range",
        lambda: PGD(CLS)(X, torch.tensor([0, 3])),
        ValueError,
        r"`y` holds class indices outside \[0, 2\]",
    ),
    ("negative_label", lambda: PGD(CLS)(X, torch.tensor([-1, 0])), ValueError, "`y` holds class indices outside"),
    ("binary_label_out_of_range", lambda: PGD(BIN)(X, torch.tensor([0, 2])), ValueError, r"outside \[0, 1\]"),
    ("fractional_label", lambda: PGD(CLS)(X, torch.tensor([0.5, 1.0])), ValueError, "integer class indices"),
    ("label_batch_mismatch", lambda: PGD(CLS)(X, torch.tensor([0, 1, 2])), ValueError, "one entry per sample"),
    ("label_shape_for_task", lambda: PGD(CLS)(X, torch.zeros(2, 5)), ValueError, r"class indices of shape \(N,\)"),
    (
        "multilabel_shape",
        lambda: PGD(CLS, task="multilabel")(X, torch.zeros(2, 4)),
        ValueError,
        "multi-hot labels of shape",
    ),
    ("multilabel_values", lambda: PGD(CLS, task="multilabel")(X, torch.full((2, 3), 0.5)), ValueError, "only 0 and 1"),
    ("seg_label_shape", lambda: PGD(SEG)(X, torch.zeros(2, 1, 4, 4)), ValueError, "label map"),
    ("seg_label_range", lambda: PGD(SEG)(X, torch.full((2, 1, 8, 8), 3)), ValueError, r"outside \[0, 2\]"),
    ("seg_task_on_classifier", lambda: PGD(CLS, task="segmentation")(X, Y), ValueError, "needs logits"),
    ("integer_x", lambda: PGD(CLS)((X * 255).to(torch.uint8), Y), TypeError, "`x` must be a floating-point tensor"),
    ("x_not_tensor", lambda: PGD(CLS)(X.numpy(), Y), TypeError, "`x` must be a torch.Tensor"),
    ("x_without_batch_dim", lambda: PGD(CLS)(X[0, 0], Y), ValueError, r"\(N, C, \*spatial\)"),
    ("reversed_value_range", lambda: PGD(CLS, value_range=(1.0, 0.0)), ValueError, "lo < hi"),
    ("value_range_not_pair", lambda: PGD(CLS, value_range=1.0), TypeError, "`value_range` must be a pair"),
    ("x_outside_value_range", lambda: PGD(CLS)(X * 2, Y), ValueError, "outside `value_range`"),
    ("mask_shape_mismatch", lambda: PGD(CLS)(X, Y, mask=torch.ones(2, 1, 4, 4)), ValueError, "`mask` of shape"),
    ("dlr_binary", lambda: PGD(BIN, loss="dlr")(X, torch.tensor([0, 1])), ValueError, "DLR needs at least 3 classes"),
    ("targeted_dlr_3_classes", lambda: PGD(CLS, loss="dlr", targeted="random")(X, Y), ValueError, "at least 4 classes"),
    ("dice_for_classification", lambda: PGD(CLS, loss="dice")(X, Y), ValueError, "does not apply to classification"),
    ("model_not_callable", lambda: PGD("resnet"), TypeError, "`model` must be an nn.Module or a callable"),
    ("model_returns_tuple", lambda: PGD(lambda v: (CLS(v), 0))(X, Y), TypeError, "must return a tensor of logits"),
    ("missing_target", lambda: PGD(CLS, targeted=True)(X, Y), ValueError, "`target` is required"),
    ("target_when_untargeted", lambda: PGD(CLS)(X, Y, target=Y), ValueError, "build it with targeted=True"),
    ("unknown_target_mode", lambda: PGD(CLS, targeted="most_likely"), ValueError, "`targeted` must be one of"),
    (
        "least_likely_segmentation",
        lambda: PGD(SEG, targeted="least_likely")(X, torch.zeros(2, 1, 8, 8)),
        ValueError,
        "classification only",
    ),
    ("restarts_without_random_start", lambda: PGD(CLS, restarts=3, random_start=False), ValueError, "`restarts` > 1"),
    (
        "seg_success_ratio",
        lambda: PGD(SEG, seg_success_ratio=1.5),
        ValueError,
        r"`seg_success_ratio` must be in \(0, 1\]",
    ),
    ("unknown_task", lambda: PGD(CLS, task="detection"), ValueError, "`task` must be one of"),
    ("unknown_attack_name", lambda: make_attack("deepfool", CLS), ValueError, "`name` must be one of"),
    (
        "unknown_attack_argument",
        lambda: make_attack("fgsm", CLS, steps=10),
        TypeError,
        r"takes no argument\(s\) \['steps'\]",
    ),
    (
        "no_input_gradient",
        lambda: PGD(lambda v: CLS(v.detach()))(X, Y),
        RuntimeError,
        "not differentiable with respect to its input",
    ),
]


@pytest.mark.parametrize("call,error,pattern", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_rejected_with_a_clear_message(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


def test_probability_outputs_warn():
    probs = torch.nn.Sequential(CLS, torch.nn.Softmax(dim=1))
    with pytest.warns(UserWarning, match="look like probabilities"):
        PGD(probs, steps=1)(X, Y)


def test_empty_batch_is_returned_unchanged():
    empty = torch.zeros(0, 1, 8, 8)
    result = PGD(CLS).perturb(empty, torch.zeros(0, dtype=torch.long))
    assert result.x_adv.shape == empty.shape and result.success.numel() == 0


def test_zero_budget_returns_the_input():
    assert torch.equal(PGD(CLS, eps=0.0)(X, Y), X)


def _nan_network():
    net = TinyClassifier(2, 1, 3).eval()
    with torch.no_grad():
        net.head.weight.fill_(float("nan"))
    return net


LOGIT_CASES = [
    ("nan_weights", lambda: PGD(_nan_network())(X, Y), ValueError, "NaN or Inf logits"),
    ("inf_logits", lambda: FGSM(lambda v: CLS(v) * float("inf"))(X, Y), ValueError, "NaN or Inf logits"),
    ("integer_logits", lambda: PGD(lambda v: (CLS(v) * 100).long())(X, Y), TypeError, "floating-point logits"),
    ("bool_logits", lambda: FGSM(lambda v: CLS(v) > 0)(X, Y), TypeError, "floating-point logits"),
    ("nan_weights_autoattack", lambda: AutoAttack(_nan_network(), check=False)(X, Y), ValueError, "NaN or Inf"),
]


@pytest.mark.parametrize("call,error,pattern", [c[1:] for c in LOGIT_CASES], ids=[c[0] for c in LOGIT_CASES])
def test_logits_that_cannot_be_scored_are_an_error(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


def _per_image(name: str) -> bool:
    """Attacks applied per image (fitted attacks, universal perturbations and patches, have their own tests)."""
    return attack_class(name).threat_model == "per-image"


@pytest.mark.parametrize(
    "name", [n for n in available_attacks() if "classification" in attack_class(n).tasks and _per_image(n)]
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_input_dtype_other_than_the_network_is_computed_in_the_network_dtype(name, dtype):
    """The rule: compute in the network's dtype, return the input's dtype, the budget exact in it."""
    kwargs = {"steps": 2} if "steps" in attack_arguments(name) else {}
    kwargs.update({"queries": 20} if "queries" in attack_arguments(name) else {})
    x = X.to(dtype)
    attack = make_attack(name, CLS, eps=8 / 255, **kwargs)
    x_adv = attack(x, Y)
    assert x_adv.dtype == dtype and x_adv.shape == x.shape
    assert float((x_adv.double() - x.double()).abs().max()) <= 8 / 255 + 1e-6
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    reference = make_attack(name, CLS, eps=8 / 255, **kwargs)(x.float(), Y)
    if dtype == torch.float64:  # the float32 attack on the same values (the budget is enforced in float64)
        assert torch.allclose(x_adv.float(), reference, atol=1e-6, rtol=0)


def test_autoattack_and_transform_accept_float64_numpy_images():
    import numpy as np

    x64 = X.double()
    out = AutoAttack(CLS, version="custom", attacks=["apgd_ce"], check=True, steps=2)(x64, Y)
    assert out.dtype == torch.float64
    image = np.random.default_rng(0).random((1, 8, 8))
    perturbed = RandAdversarialPerturb(CLS, "pgd", {"eps": 8 / 255, "steps": 2})(image, label=np.array(1))
    assert torch.as_tensor(perturbed).dtype == torch.float64 and tuple(perturbed.shape) == image.shape


@pytest.mark.parametrize("name", ["apgd_t", "fab_t"])
def test_custom_autoattack_takes_classification_only_attacks(name):
    net = TinyClassifier(2, 1, 4).eval()
    aa = AutoAttack(net, version="custom", attacks=[name], steps=2, check=False)
    result = aa.perturb(X, torch.tensor([0, 3]))
    assert result.x_adv.shape == X.shape and result.details["attacks"] == [name]


class _ModelWithDefaultArgument:
    """A model function whose only parameter has a default: a model, not a network provider."""

    def __call__(self, x=None):
        return CLS(x)


TRANSFORM_CASES = [
    ("image_without_channel_axis", lambda: RandAdversarialPerturb(CLS)(torch.rand(8, 8), label=1), "no channel axis"),
    ("batch_without_batched", lambda: RandAdversarialPerturb(CLS)(X, label=Y), "pass batched=True"),
    ("wrong_dims", lambda: RandAdversarialPerturb(CLS)(torch.rand(1, 4, 4, 4), label=1), "2D images"),
]


@pytest.mark.parametrize("call,pattern", [c[1:] for c in TRANSFORM_CASES], ids=[c[0] for c in TRANSFORM_CASES])
def test_transform_names_the_layout_the_network_takes(call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call()


def test_transform_treats_a_callable_with_a_defaulted_parameter_as_a_model():
    out = RandAdversarialPerturb(_ModelWithDefaultArgument(), "fgsm", {"eps": 8 / 255})(X[0], label=1)
    assert out.shape == X[0].shape
    batch = RandAdversarialPerturb(CLS, "fgsm", {"eps": 8 / 255}, batched=True)(X, label=Y)
    assert batch.shape == X.shape
