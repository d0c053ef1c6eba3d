"""A model that has already run traces as a fresh one: each model of a coverage zoo traced and
analysed twice, as built and after one forward on its example (as every trained model has run),
printing both shares (`fxprune.coverage`), how each was captured, and the calls made opaque.
A row marked "differs" is a model whose own caches change what fxprune sees.

    python benchmarks/after_a_forward.py --zoo dense             # about 3 minutes
    python benchmarks/after_a_forward.py --zoo hf
    python benchmarks/after_a_forward.py --zoo timm --models convit_tiny,resnet18

The models and inputs are `benchmarks/coverage.py`'s (random weights, the zoo's input size).
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings

import torch
from coverage import DETECTORS, HF_NAMES, SEGMENTERS, build, timm_names

import fxprune
from fxprune.trace import LEAF_KEY


def one(zoo: str, name: str, ran: bool) -> str:
    """The share, capture and opaque calls of the model, traced as built or after a forward."""
    model, args, kwargs = build(zoo, name)
    if ran:
        with torch.no_grad():
            model(*args, **kwargs)
    try:
        gm = fxprune.trace(model, args, example_kwargs=kwargs)
        share = fxprune.coverage(gm, fxprune.analyze(gm)).share
    except Exception as exc:  # noqa: BLE001 - a failure is a row of the table
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    opaque = sorted({n.meta[LEAF_KEY].module for n in gm.graph.nodes if LEAF_KEY in n.meta})
    return f"{share:.4f}, {gm.meta['fxprune.capture']}, opaque: {', '.join(opaque) or 'none'}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--zoo", choices=("timm", "hf", "dense"), default="dense")
    parser.add_argument("--models", help="comma-separated names; default: the whole zoo")
    args = parser.parse_args()
    names = (args.models.split(",") if args.models else
             {"timm": timm_names, "hf": lambda: list(HF_NAMES),
              "dense": lambda: list(SEGMENTERS + DETECTORS)}[args.zoo]())
    warnings.simplefilter("ignore")  # the exporter's and torchvision's, once per model
    logging.disable(logging.WARNING)
    print("| model | as built: share, capture, opaque calls | after a forward | |")
    print("|---|---|---|---|")
    differ = 0
    for name in names:
        fresh, ran = one(args.zoo, name, False), one(args.zoo, name, True)
        differ += fresh != ran
        print(f"| {name} | {fresh} | {ran} | {'differs' if fresh != ran else 'same'} |", flush=True)
    print(f"\n{len(names) - differ} of {len(names)} models the same after a forward")
    return 0


if __name__ == "__main__":
    sys.exit(main())
