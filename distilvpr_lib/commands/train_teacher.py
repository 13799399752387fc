"""``distilvpr train-teacher --dataset DIR [--profile smoke|cpu|study|paper] [--set section.field=value ...]
[--seed N] [--epochs N] [--out teacher_weights/NAME] [--backend torch|minkowski] [--device auto|cpu|cuda]``.

Trains the multi-modal teacher (engine.runs.teacher_run.train_teacher): the epoch is selected on the validation
split, the selected teacher is evaluated on the test split and its training-set embeddings are
cached. Writes ``config.json``, ``teacher.pt``, ``metrics.json``, ``summary.json``, ``run.log``,
``test_results.npz``, ``teacher_cache.pt`` and ``tensorboard/`` into ``--out`` (``checkpoints/`` while it can
resume); re-running resumes an unfinished run and returns a complete one.

Distributed (DDP) training: the same command under ``torchrun``, e.g.
``torchrun --nproc-per-node 2 -m distilvpr_lib.cli train-teacher --dataset DIR ...`` (see docs/SCALING.md).

Also home of the option helpers shared by ``distill`` and ``evaluate``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from typing import Any

from distilvpr_lib.config import AUTO_LAYOUT, LAYOUTS, PROFILES, ExperimentConfig


# ---------------------------------------------------------------------------
# Shared option helpers
# ---------------------------------------------------------------------------
def add_common_training_options(parser: argparse.ArgumentParser, default_profile: str = "cpu") -> None:
    """Options every training subcommand takes (dataset, profile, overrides, seed, epochs, device, resume)."""
    parser.add_argument("--dataset", required=True, help="benchmark folder (Oxford or Boreas layout)")
    parser.add_argument("--image-dir", default=None, help="image folder (default: <dataset>/images for Oxford)")
    parser.add_argument("--profile", default=default_profile, help=f"{' | '.join(PROFILES)} (default %(default)s)")
    parser.add_argument("--set", dest="overrides", action="append", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config override section.field=value (repeatable), e.g. train.batch_size=64")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: the profile's train.seed)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default: the profile's)")
    parser.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (default: the profile's)")
    parser.add_argument("--layout", default=AUTO_LAYOUT, choices=(AUTO_LAYOUT, *LAYOUTS),
                        help="dataset layout (default auto: detected from --dataset's files)")
    parser.add_argument("--cache-dir", default=None,
                        help="folder of the image cache when data.image_cache is on (default: $DISTILVPR_CACHE_DIR, "
                             "else <dataset>/.cache when writable, else the run folder)")
    parser.add_argument("--no-resume", action="store_true", help="start over even if --out holds a checkpoint")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")


def parse_key_values(pairs: Iterable[str]) -> dict[str, str]:
    """``["a.b=1", "c=x"]`` -> ``{"a.b": "1", "c": "x"}``.

    Raises:
        ValueError: an item without ``=`` or with an empty key.
    """
    out: dict[str, str] = {}
    for item in pairs:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _typed(value: str, current: Any) -> Any:
    """A command-line string for a field whose current value is ``current`` (None-typed fields get ints/floats)."""
    if value.lower() in {"none", "null"}:
        return None
    if current is None:
        for cast in (int, float):
            try:
                return cast(value)
            except ValueError:
                pass
    return value


def apply_cli_overrides(cfg: ExperimentConfig, pairs: Iterable[str], allow_terms: bool = False) -> ExperimentConfig:
    """Apply ``--set`` items to a config.

    ``section.field=value`` or a unique bare ``field=value`` go through :func:`config.apply_overrides`
    (values coerced to the field's type; ``none`` = None). With ``allow_terms``, a bare name that is a
    distillation loss term or group (``rkdg=10``, ``cross_euclidean_st2ss=0.1``) sets
    ``cfg.distill.terms[name]``.

    Raises:
        KeyError: unknown field or term (the message lists the known names). ValueError: malformed item.
    """
    import dataclasses

    from distilvpr_lib.config import apply_overrides

    term_names: set[str] = set()
    if allow_terms:
        from distilvpr_lib.losses.distiller import known_weight_names

        term_names = set(known_weight_names())
    for key, raw in parse_key_values(pairs).items():
        if "." not in key and key in term_names:
            terms = dict(cfg.distill.terms)
            terms[key] = float(raw)
            cfg = dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, terms=terms))
            continue
        current = None
        section, _, name = key.rpartition(".")
        holders = [getattr(cfg, section)] if section and hasattr(cfg, section) else [
            getattr(cfg, s) for s in ("data", "model", "train", "distill", "synth")]
        for holder in holders:
            if dataclasses.is_dataclass(holder) and hasattr(holder, name):
                current = getattr(holder, name)
                break
        try:
            cfg = apply_overrides(cfg, {key: _typed(raw, current)})
        except KeyError as exc:
            if allow_terms and "." not in key:
                raise KeyError(f"{exc.args[0]}; or a distillation term: {sorted(term_names)}") from None
            raise
    return cfg


def build_config(args: argparse.Namespace, allow_terms: bool = False) -> ExperimentConfig:
    """Profile -> ``--set`` overrides -> dataset/seed/epochs/device/backend options (in that order)."""
    from distilvpr_lib.config import apply_overrides, profile_config

    cfg = profile_config(args.profile)
    cfg = apply_cli_overrides(cfg, [item for group in args.overrides for item in group], allow_terms=allow_terms)
    explicit: dict[str, Any] = {"data.dataset_dir": args.dataset}
    if args.image_dir is not None:
        explicit["data.image_dir"] = args.image_dir
    if args.seed is not None:
        explicit["train.seed"] = args.seed
    if args.epochs is not None:
        explicit["train.epochs"] = args.epochs
    if args.device is not None:
        explicit["train.device"] = args.device
    if getattr(args, "backend", None):
        explicit["model.sparse_backend"] = args.backend
    if getattr(args, "cache_dir", None) is not None:
        explicit["data.image_cache_dir"] = args.cache_dir
    layout = getattr(args, "layout", AUTO_LAYOUT)
    if layout != AUTO_LAYOUT:
        explicit["data.layout"] = layout
    elif not any(item.partition("=")[0].strip() in {"data.layout", "layout"}
                 for group in args.overrides for item in group):
        explicit["data.layout"] = detected_layout(args.dataset, cfg.data.layout)
    return apply_overrides(cfg, explicit)


def detected_layout(dataset_dir: str, fallback: str) -> str:
    """The layout of ``dataset_dir`` from its files (``--layout auto``), recorded in the run's config.json;
    ``fallback`` when the folder is not recognised (the preflight then names the problem)."""
    from distilvpr_lib.data.benchmark import detect_layout
    from distilvpr_lib.errors import DistilVPRError

    try:
        return detect_layout(dataset_dir)
    except (DistilVPRError, OSError):
        return fallback


def fail(message: str) -> int:
    """Print ``error: message`` to stderr and return exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    return 2


# ---------------------------------------------------------------------------
# train-teacher
# ---------------------------------------------------------------------------
def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train-teacher`` subcommand."""
    parser = subparsers.add_parser(
        "train-teacher",
        help="train the multi-modal teacher (selection on validation, report on test, embedding cache)",
        description="Train the MinkLoc++ teacher; writes config.json, teacher.pt, metrics.json, test_results.npz, "
                    "teacher_cache.pt, checkpoints/ and tensorboard/ into --out. Re-running resumes.",
    )
    add_common_training_options(parser)
    parser.add_argument("--backend", default=None, choices=("torch", "minkowski"), help="sparse convolution backend")
    parser.add_argument("--out", default=None, help="teacher folder (default teacher_weights/<profile>)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Resolve the config, train, print the test summary; 0 on success, 2 on bad options."""
    from pathlib import Path

    from distilvpr_lib.config import profile_folders

    try:
        cfg = build_config(args)
    except (KeyError, ValueError) as exc:
        return fail(str(exc.args[0]) if exc.args else str(exc))
    out = Path(args.out or profile_folders(args.profile).teacher)
    # the inputs first, before torch is imported: bad input fails in about a second, nothing written
    from distilvpr_lib.engine.runs.preflight import preflight_train_teacher

    preflight_train_teacher(cfg, out, resume=not args.no_resume)
    from distilvpr_lib.engine.runs.teacher_run import train_teacher

    metrics = train_teacher(cfg, out, resume=not args.no_resume, progress=not args.quiet, preflight=False)
    from distilvpr_lib.engine.runs.run_setup import summary_text
    from distilvpr_lib.engine.train.distributed import is_main_process

    if args.quiet and is_main_process():  # the pipeline printed the summary unless quiet; print it once
        print(summary_text("teacher", metrics, out))
    return 0
