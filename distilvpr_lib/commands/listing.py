"""``distilvpr list methods|terms|presets|profiles|config [--profile P]``: what the options accept.

Everything is read from where it is defined: the loss registry (methods and their terms, with the first line of
each loss's docstring), the presets of :mod:`distilvpr_lib.losses.distiller`, the profiles and the config
dataclasses of :mod:`distilvpr_lib.config` (defaults and the comments above each field).
"""

from __future__ import annotations

import argparse
import inspect

#: What ``distilvpr list`` can list, with the one-line help of each.
TOPICS: dict[str, str] = {
    "methods": "the distillation losses (registered classes) and what each is",
    "terms": "the term names --set distill.terms / notebook 03's terms accept, by loss",
    "presets": "the values of --method (distill.method) and the term weights each sets",
    "profiles": "the profiles (--profile) and what they set, with their default folders",
    "config": "every config key (section.field) with its type, default and help (for --set / overrides)",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``list`` subcommand."""
    from distilvpr_lib.config import PROFILES

    parser = subparsers.add_parser(
        "list", help="list methods, loss terms, presets, profiles or config keys (with defaults and help)",
        description="List what the options accept: " + "; ".join(f"{k}: {v}" for k, v in TOPICS.items()) + ".")
    parser.add_argument("topic", choices=list(TOPICS), help="what to list")
    parser.add_argument("--profile", default=None, choices=list(PROFILES),
                        help="config: show this profile's values instead of the dataclass defaults")
    parser.set_defaults(func=run)


def _first_line(obj: object) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.split("\n\n")[0].replace("\n", " ").strip()


def lines(topic: str, profile: str | None = None) -> list[str]:
    """The lines ``distilvpr list <topic>`` prints."""
    if topic in ("methods", "terms", "presets"):
        from distilvpr_lib.losses.distiller import PRESETS
        from distilvpr_lib.losses.registry import LOSSES

        if topic == "methods":
            width = max(map(len, LOSSES))
            return [f"{name:<{width}}  {_first_line(cls)}" for name, cls in sorted(LOSSES.items())]
        if topic == "terms":
            out = []
            for name, cls in sorted(LOSSES.items()):
                group = f" (group weight: {name})" if cls.grouped else ""
                out.append(f"{name}{group}: {', '.join(cls.term_names())}")
            return out
        width = max(map(len, PRESETS))
        return [f"{name:<{width}}  " + (", ".join(f"{t}={w:g}" for t, w in spec.items()) or "(task loss only)")
                for name, spec in PRESETS.items()]
    from distilvpr_lib import config

    if topic == "profiles":
        out = []
        for name, sections in config.PROFILES.items():
            folders = config.profile_folders(name)
            cfg = config.profile_config(name)
            out.append(f"{name}: dataset {folders.dataset}, teacher {folders.teacher}, batch "
                       f"{folders.batch or '-'} ({folders.grid or 'no grid'}); {cfg.train.epochs} epochs, "
                       f"batch size {cfg.train.batch_size}, images {cfg.synth.image_height}x{cfg.synth.image_width}")
            changed = [f"{section}.{key}" for section, values in sections.items() for key in values]
            out.append(f"  sets: {', '.join(changed)}")
        return out
    fields = config.config_fields(profile)
    width = max(len(f.key) for f in fields)
    return [f"{f.key:<{width}}  {f.type:<16} {f.default!r:<14} {f.help}".rstrip() for f in fields]


def run(args: argparse.Namespace) -> int:
    """Print the list; 0."""
    print("\n".join(lines(args.topic, args.profile)))
    return 0
