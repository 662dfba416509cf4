# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""The ``monai-adv`` command."""

from __future__ import annotations

import argparse
import errno
import json
import math
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, List, Optional

from monai_adv import __version__
from monai_adv.apps.arguments import (
    CommandError,
    check_count,
    check_data,
    check_device,
    check_model,
    check_out_folder,
    check_surrogate,
    parse_component,
    parse_eps,
    parse_patch_sizes,
    parse_value_range,
)
from monai_adv.apps.certify_arguments import check_smoothing, parse_radii
from monai_adv.task_names import TASK_CHOICES

__all__ = ["main", "build_parser"]

DEFAULT_EPS = "1/255,2/255,4/255,8/255"
SMOOTHING_TASK_CHOICES = ("auto", "classification", "binary", "multiclass", "multilabel", "segmentation")


def _format_value(key: str, value: Any) -> str:
    """Show budgets in the usual x/255 form when they are whole multiples of 1/255."""
    if key in ("eps", "alpha") and isinstance(value, float) and 0 < value <= 1 and not math.isinf(value):
        scaled = value * 255
        if abs(scaled - round(scaled)) < 1e-9:
            return f"{int(round(scaled))}/255"
    if isinstance(value, type):  # e.g. the objective class
        return f"{value.__module__}.{value.__qualname__}"
    return repr(value)


def _attacks(args: argparse.Namespace) -> int:
    from monai_adv.attacks import attack_class, attack_defaults, available_attacks

    rows = {name: attack_defaults(name) for name in available_attacks()}
    if args.json:
        print(json.dumps(rows, indent=2, default=lambda v: _format_value("", v) if isinstance(v, type) else str(v)))
        return 0
    print(f"monai_adv {__version__}: {len(rows)} attacks. Build one with")
    print("    monai_adv.attacks.make_attack(name, model, **overrides)")
    print("alpha=None means eps / 4 (PGD, CW) or eps (FGSM).\n")
    for name, defaults in rows.items():
        print(f"{name}  (monai_adv.attacks.{attack_class(name).__name__})")
        for key, value in defaults.items():
            print(f"    {key:<18} {_format_value(key, value)}")
        print()
    return 0


def _csv(text: str) -> List[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _check_sizes(args: argparse.Namespace) -> None:
    """The counts every subcommand may take: each >= 1 (0 would silently mean "the default" or "nothing")."""
    for flag in ("epochs", "train_samples", "test_samples", "samples", "fit_samples", "batch_size"):
        if hasattr(args, flag):
            check_count(getattr(args, flag), "--" + flag.replace("_", "-"))
    if hasattr(args, "out"):
        check_out_folder(Path(args.out))


def _demo(args: argparse.Namespace) -> int:
    _check_sizes(args)
    eps = parse_eps(args.eps)
    device = check_device(args.device)
    from monai_adv.apps.demo import DemoConfig, run_demo

    config = DemoConfig(
        out=Path(args.out),
        epochs=args.epochs,
        train_samples=args.train_samples,
        test_samples=args.test_samples,
        eps=eps,
        attacks=_csv(args.attacks) if args.attacks else None,
        full=args.full,
        seed=args.seed,
        device=device,
        progress=not args.no_progress,
    )
    run_demo(config)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    _check_sizes(args)
    value_range = parse_value_range(args.value_range)
    eps = parse_eps(args.eps, value_range)
    patch_sizes = parse_patch_sizes(args.patch_sizes)
    purifier = None if args.purifier is None else parse_component(args.purifier, "--purifier")
    detector = None if args.detector is None else parse_component(args.detector, "--detector")
    check_model(args.bundle, args.checkpoint, args.network)
    check_surrogate(args.surrogate_checkpoint, args.surrogate_network)
    check_data(args.data)
    if args.fit_data is not None:
        check_data(args.fit_data)
    if not _csv(args.attacks):
        raise CommandError("--attacks: give at least one attack, e.g. fgsm,pgd-20")
    device = check_device(args.device)
    from monai_adv.apps.evaluate import run_evaluate

    run_evaluate(
        data=args.data,
        attacks=_csv(args.attacks),
        eps=eps,
        out=Path(args.out),
        bundle=args.bundle,
        checkpoint=args.checkpoint,
        network=args.network,
        surrogate_checkpoint=args.surrogate_checkpoint,
        surrogate_network=args.surrogate_network,
        norm=args.norm,
        value_range=value_range,
        task=args.task,
        samples=args.samples,
        batch_size=args.batch_size,
        seed=args.seed,
        device=device,
        progress=not args.no_progress,
        min_norm=args.min_norm,
        corruptions=args.corruptions,
        patch_sizes=patch_sizes,
        fit_data=args.fit_data,
        fit_samples=args.fit_samples,
        purifier=purifier,
        detector=detector,
    )
    return 0


def _benchmark(args: argparse.Namespace) -> int:
    _check_sizes(args)
    eps = parse_eps(args.eps)
    check_data(args.data, ("demo", "medmnist"))
    unknown = [t for t in _csv(args.tasks) if t not in ("classification", "segmentation")]
    if unknown or not _csv(args.tasks):
        raise CommandError(f"--tasks: expected classification and/or segmentation, got {args.tasks!r}")
    device = check_device(args.device)
    from monai_adv.benchmark.grid import GridConfig, run_grid

    config = GridConfig(
        out=Path(args.out),
        data=args.data,
        tasks=_csv(args.tasks),
        methods=_csv(args.methods),
        eps=eps,
        attacks=_csv(args.attacks) if args.attacks else None,
        epochs=args.epochs,
        train_samples=args.train_samples,
        test_samples=args.test_samples,
        seed=args.seed,
        device=device,
        progress=not args.no_progress,
    )
    try:
        run_grid(config)
    except (ValueError, FileNotFoundError) as e:
        raise CommandError(str(e)) from e
    return 0


def _attack(args: argparse.Namespace) -> int:
    _check_sizes(args)
    eps = parse_eps(args.eps)
    if len(eps) != 1:
        raise CommandError(f"--eps: give one budget, got {args.eps!r}")
    check_model(args.bundle, args.checkpoint, args.network)
    device = check_device(args.device)
    from monai_adv.apps.attack_image import run_attack

    run_attack(
        image=args.image,
        out=Path(args.out),
        attack=args.attack,
        eps=eps[0],
        bundle=args.bundle,
        checkpoint=args.checkpoint,
        network=args.network,
        label=args.label,
        norm=args.norm,
        seed=args.seed,
        device=device,
    )
    return 0


def _certify(args: argparse.Namespace) -> int:
    _check_sizes(args)
    check_smoothing(args.sigma, args.n0, args.n, args.alpha)
    radii = parse_radii(args.radii, args.sigma)
    check_model(args.bundle, args.checkpoint, args.network)
    if args.data is not None:
        check_data(args.data)
    device = check_device(args.device)
    from monai_adv.apps.certify import run_certify

    run_certify(
        out=Path(args.out),
        sigma=args.sigma,
        data=args.data,
        bundle=args.bundle,
        checkpoint=args.checkpoint,
        network=args.network,
        n0=args.n0,
        n=args.n,
        alpha=args.alpha,
        radii=radii,
        task=args.task,
        samples=args.samples,
        batch_size=args.batch_size,
        correction=args.correction,
        seed=args.seed,
        device=device,
        progress=not args.no_progress,
    )
    return 0


def _report(args: argparse.Namespace) -> int:
    from monai_adv.benchmark.html_report import HTML_NAME, load_reports, render_html_report
    from monai_adv.benchmark.io import write_text_atomic

    try:
        reports = load_reports(args.reports)
    except ValueError as e:
        raise CommandError(str(e).replace("`reports`", "REPORT")) from e
    figures = Path(args.figures) if args.figures is not None else Path(args.reports[0]).parent
    if not figures.is_dir():
        raise CommandError(f"--figures: {figures} is not a folder (the one holding the run's PNG figures)")
    out = Path(args.out) if args.out is not None else figures / HTML_NAME
    if out.suffix.lower() not in (".html", ".htm"):
        raise CommandError(f"--out: expected a file name ending in .html, got {str(out)!r}")
    check_out_folder(out.parent, "--out")
    path = write_text_atomic(out, render_html_report(reports, figures, args.title))
    print(f"wrote {path}")
    return 0


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", type=Path, help="a MONAI bundle folder (configs/inference.json, models/model.pt)")
    parser.add_argument("--checkpoint", type=Path, help="a state dict (loaded with weights_only=True)")
    parser.add_argument(
        "--network",
        help='the network of --checkpoint: "demo", a JSON object with "_target_" (as a bundle\'s network_def), '
        "or a .json file",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="monai-adv", description="Adversarial attacks, defenses and robustness evaluation for MONAI."
    )
    parser.add_argument("--version", action="version", version=f"monai_adv {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    attacks = sub.add_parser("attacks", help="list the available attacks and their default arguments")
    attacks.add_argument("--json", action="store_true", help="print the defaults as JSON")
    attacks.set_defaults(func=_attacks)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--seed", type=int, default=0, help="seed of data, training and attacks")
    common.add_argument("--no-progress", action="store_true", help="no progress bars")
    common.add_argument(
        "--device",
        help="where models and data go: cpu, cuda or cuda:N (default: cuda when torch.cuda.is_available(), else cpu)",
    )

    demo = sub.add_parser(
        "demo",
        parents=[common],
        help="train a natural and a robust model on the demo data, attack both, write the report (about 5 min)",
    )
    demo.add_argument("--out", default="monai_adv_demo", help="report folder (default: monai_adv_demo)")
    demo.add_argument("--full", action="store_true", help="add Square (5000 queries) and SimBA-DCT")
    demo.add_argument("--epochs", type=int, default=10)
    demo.add_argument("--train-samples", type=int, default=1000)
    demo.add_argument("--test-samples", type=int, default=100)
    demo.add_argument("--eps", default=DEFAULT_EPS, help=f"budgets (default {DEFAULT_EPS})")
    demo.add_argument("--attacks", help="comma-separated suite (default fgsm,pgd-20,cw-30,autoattack)")
    demo.set_defaults(func=_demo)

    evaluate = sub.add_parser("evaluate", parents=[common], help="score a model under attacks -> report folder")
    _add_model_arguments(evaluate)
    evaluate.add_argument(
        "--data",
        default="demo",
        help="demo[:task], demo3d[:task], medmnist:FILE.npz, csv:MANIFEST.csv or nifti:FOLDER (images/, labels/)",
    )
    evaluate.add_argument(
        "--attacks",
        default="fgsm,pgd-20,cw-30,autoattack",
        help="comma-separated suite: presets (fgsm, pgd-20, cw-30, autoattack, autoattack-fast, square-5000, "
        "simba-dct) or registered attacks (`monai-adv attacks`)",
    )
    evaluate.add_argument("--eps", default=DEFAULT_EPS, help=f"budgets (default {DEFAULT_EPS})")
    evaluate.add_argument(
        "--min-norm",
        metavar="ATTACK",
        help="a minimum-norm attack (fmn) run once: the robust accuracy against eps on a fine grid (classification)",
    )
    evaluate.add_argument(
        "--corruptions",
        metavar="NAMES",
        help="natural corruptions scored at severities 1-5: 'all' or comma-separated names (docs/threat_models.md)",
    )
    evaluate.add_argument(
        "--patch-sizes",
        default="0.01,0.02,0.05,0.1",
        help="sizes of the patch attacks: fractions of the image area (volume in 3D) or sides in voxels",
    )
    evaluate.add_argument(
        "--fit-data",
        help="the data the fitted attacks (uap, patch) are fitted on, as --data (default: the validation split "
        "of demo and medmnist data; else the evaluation data, said in the report)",
    )
    evaluate.add_argument("--fit-samples", type=int, help="use the first N samples of the fit data (demo: 200)")
    evaluate.add_argument(
        "--purifier",
        metavar="NAME[:k=v,...]",
        help="evaluate the model behind an input purifier (median, gaussian, bit_depth, noise), with the "
        "non-adaptive attack and the adaptive one (BPDA/EoT) to quote, e.g. bit_depth:bits=4 (docs/defenses.md)",
    )
    evaluate.add_argument(
        "--detector",
        metavar="NAME[:k=v,...]",
        help="fit a detector (mahalanobis, feature_squeezing) on the fit data and report its AUROC and the "
        "'classify or reject' robust accuracy under PGD and the detector-aware APGD (docs/defenses.md)",
    )
    evaluate.add_argument("--norm", default="Linf", choices=("Linf", "L2"))
    evaluate.add_argument("--value-range", default="0,1", help="intensity range 'lo,hi' or 'none'")
    evaluate.add_argument("--task", default="auto", choices=TASK_CHOICES)
    evaluate.add_argument("--samples", type=int, help="use the first N samples")
    evaluate.add_argument("--batch-size", type=int, default=32)
    evaluate.add_argument("--surrogate-checkpoint", type=Path, help="transfer setting: the surrogate's weights")
    evaluate.add_argument("--surrogate-network", help="transfer setting: the surrogate's network (as --network)")
    evaluate.add_argument("--out", default="monai_adv_report", help="report folder")
    evaluate.set_defaults(func=_evaluate)

    benchmark = sub.add_parser(
        "benchmark", parents=[common], help="the survey grid: methods x eps x attacks (resumable)"
    )
    benchmark.add_argument("--data", default="demo", help="demo, or medmnist:FILE.npz (classification)")
    benchmark.add_argument("--tasks", default="classification,segmentation")
    benchmark.add_argument(
        "--methods",
        default="nat,pgd_at,trades,mart,hat",
        help="training methods, comma-separated: nat, pgd_at, fast_at, n_fgsm, free_at, trades, mart, hat, awp "
        "(methods a task does not support are skipped)",
    )
    benchmark.add_argument("--eps", default=DEFAULT_EPS, help=f"budgets (default {DEFAULT_EPS})")
    benchmark.add_argument("--attacks", help="classification suite (default fgsm,pgd-20,cw-30,autoattack)")
    benchmark.add_argument("--epochs", type=int, default=6)
    benchmark.add_argument("--train-samples", type=int, default=1000)
    benchmark.add_argument("--test-samples", type=int, default=200)
    benchmark.add_argument("--out", default="monai_adv_benchmark", help="results folder (rerun to resume)")
    benchmark.set_defaults(func=_benchmark)

    attack = sub.add_parser("attack", parents=[common], help="attack one image -> adversarial NIfTI + preview PNG")
    _add_model_arguments(attack)
    attack.add_argument("--image", type=Path, required=True, help="a NIfTI file, a DICOM folder or a PNG")
    attack.add_argument("--attack", default="pgd-20", help="an attack name (default pgd-20)")
    attack.add_argument("--eps", default="4/255", help="the budget, a fraction of the intensity range")
    attack.add_argument("--norm", default="Linf", choices=("Linf", "L2"))
    attack.add_argument("--label", type=int, help="the true class (default: the model's clean prediction)")
    attack.add_argument("--out", default="monai_adv_attack", help="output folder")
    attack.set_defaults(func=_attack)

    certify = sub.add_parser(
        "certify",
        parents=[common],
        help="certified L2 robustness by randomized smoothing -> report folder (JSON, CSV, Markdown, curve)",
    )
    _add_model_arguments(certify)
    certify.add_argument(
        "--data",
        help="as for evaluate (default: with --bundle, the demo test split in the shape of its metadata; else demo)",
    )
    certify.add_argument("--sigma", type=float, default=0.25, help="noise std in input units (default 0.25)")
    certify.add_argument("--n0", type=int, default=100, help="selection draws per sample (default 100)")
    certify.add_argument(
        "--n",
        "--num-draws",
        dest="n",
        type=int,
        default=10_000,
        help="estimation draws per sample (default 10000; the paper uses 100000); under torchrun write --num-draws "
        "(torchrun reads --n as an abbreviation of its own options)",
    )
    certify.add_argument("--alpha", type=float, default=0.001, help="error level of a certificate (default 0.001)")
    certify.add_argument("--radii", help="L2 radii of the curve in input units (default 0 to 4 sigma by sigma/2)")
    certify.add_argument("--task", default="auto", choices=SMOOTHING_TASK_CHOICES)
    certify.add_argument("--samples", "--num-samples", dest="samples", type=int, help="use the first N samples")
    certify.add_argument(
        "--batch-size", type=int, help="noisy copies per network call (default 1000, fewer for large volumes)"
    )
    certify.add_argument("--correction", default="holm", choices=("holm", "bonferroni"), help="segmentation")
    certify.add_argument("--out", default="monai_adv_certification", help="report folder")
    certify.set_defaults(func=_certify)

    report = sub.add_parser(
        "report",
        help="rebuild report.html from the JSON reports of a run (evaluate, demo, benchmark, certify)",
        description="Render the self-contained report.html from JSON reports and the PNG figures beside them.",
    )
    report.add_argument("reports", nargs="+", metavar="REPORT", help="JSON report(s), shown in this order")
    report.add_argument("--figures", help="the folder of the run's PNG figures (default: the first report's folder)")
    report.add_argument("--out", help="the page to write (default: report.html in the figures folder)")
    report.add_argument("--title", help="the page's title (default: from the models' names)")
    report.set_defaults(func=_report)
    return parser


@contextmanager
def _quiet_engine_logs() -> Iterator[None]:
    """An error inside an ignite engine loop is reported once, as the command's one line: ignite's own
    "Engine run is terminating due to exception" lines stay out of the output (``--debug`` keeps them).
    The logger's level is restored afterwards (``main`` may run inside a longer program)."""
    import logging

    logger = logging.getLogger("ignite")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _silence_stdout() -> None:
    """After a broken pipe, point stdout at /dev/null so that Python's flush at exit does not fail again."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.debug:
        return args.func(args)
    try:
        with _quiet_engine_logs():
            return args.func(args)
    except KeyboardInterrupt:
        print("monai-adv: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `monai-adv attacks | head -1`: the reader left, which is not an error
        _silence_stdout()
        return 0
    except Exception as e:  # one line for the user; --debug shows the traceback
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:  # a full disk is the user's to fix, not a bug
            message = (e.strerror or message) + ("" if e.filename is None else f": {e.filename}")
        elif not isinstance(e, CommandError):
            message = f"{type(e).__name__}: {message} (run with --debug for the traceback)"
        print(f"monai-adv: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
