"""What several commands share: the model options (``--config/--model/--variant/--threads``) and
the profile they describe, from which every command builds its engine (``Device.from_profile``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge.card import DEFAULT_BUNDLE
from edge.profile import Profile, command_profile

CONFIG_HELP = ("device profile (firmware_config/*.yaml): model bundles, variant, delegate, threads, pipeline and "
               "service settings; the model options given here override it")
MODEL_HELP = ("TFLite model bundle folder (model.json). With --config it replaces the profile's bundle of the same "
              "modality (CT or X-ray) and keeps the others; without, it is the only bundle. Default: the profile's "
              "bundles, else the bundled models (CT: the demonstration model; X-ray: the X-ray research model "
              "edge/models/xray-research)")
VARIANT_HELP = ("bundle variant to run (int8, float32, ...) or auto: the one `ctedge tune` recorded as fastest on "
                "this CPU, where none is recorded int8 if it passes the bundle's fidelity thresholds (else the "
                "bundle's first variant that does). Default: the profile's "
                "model.variant, which is auto unless set. Binds the profile's main bundle; another bundle lacking it "
                "runs its own auto choice")
THREADS_HELP = "interpreter threads (default: the profile's; 0 or unset: the tuned count, else all cores)"


def add_model_options(parser: argparse.ArgumentParser, variant: bool = True) -> None:
    """``--config`` and ``--model``, and unless ``variant`` is False ``--variant`` and ``--threads``
    (``ctedge tune`` chooses those itself)."""
    parser.add_argument("--config", type=Path, default=None, help=CONFIG_HELP)
    parser.add_argument("--model", type=Path, default=None, help=MODEL_HELP)
    if variant:
        parser.add_argument("--variant", default=None, help=VARIANT_HELP)
        parser.add_argument("--threads", type=int, default=None, help=THREADS_HELP)


def model_profile(args: argparse.Namespace) -> Profile:
    """The profile that the model options of ``args`` describe (see ``edge.profile.command_profile``)."""
    return command_profile(args.config, args.model, DEFAULT_BUNDLE, getattr(args, "variant", None),
                           getattr(args, "threads", None))

