"""Dump every channel group of many models, to check that a change to tracing or analysis
leaves them as they were.

For the tiny models of ``tests/models.py`` and a dozen timm and torchvision models (random
weights, eval mode), it writes each group (channels, prunable, reason, exactness, members,
coupled_by) and, for the timm models, every node's recorded shape, stride and dtype, to a
pickle. Run it on the old code and on the new, then compare::

    git worktree add /tmp/old <commit> && (cd /tmp/old && PYTHONPATH=/tmp/old \\
        python /path/to/benchmarks/groups_dump.py --out /tmp/old.pkl)
    python benchmarks/groups_dump.py --out /tmp/new.pkl
    python benchmarks/groups_dump.py --compare /tmp/old.pkl /tmp/new.pkl

Run this same file both times: the tiny models come from the ``tests/models.py`` beside it, so
the source lines in the reasons match. The comparison prints the entries that differ (none, for
a change that keeps the groups) and exits 1 where any does. It takes about a minute; timm comes
from the ``bench`` extra.
"""

from __future__ import annotations

import argparse
import dataclasses
import pickle
import sys
from pathlib import Path

import torch
import torchvision

import fxprune

ROOT = Path(__file__).resolve().parents[1]
TIMM = ("efficientnet_b0", "resnet50", "vit_tiny_patch16_224", "convnext_tiny", "regnetx_002",
        "densenet121", "mobilevit_xxs", "coat_tiny", "nf_resnet26",
        "swin_tiny_patch4_window7_224", "levit_128s", "dla34")
TORCHVISION = ("mobilenet_v3_small", "shufflenet_v2_x0_5", "inception_v3")


def _groups(model: torch.nn.Module, x: torch.Tensor) -> tuple[list[tuple], list[tuple]]:
    gm = fxprune.trace(model, x)
    graph = fxprune.analyze(gm)
    shapes = [(n.name, repr(n.meta.get("tensor_meta"))) for n in gm.graph.nodes]
    return [dataclasses.astuple(g) for g in graph.groups], shapes


def dump() -> dict[str, object]:
    """Every model's groups (and the timm models' node shapes), by model name."""
    import timm

    sys.path.insert(0, str(ROOT / "tests"))
    from models import MODELS, build

    out: dict[str, object] = {}
    for name in MODELS:
        out[name] = _groups(*build(name))[0]
    for name in TIMM:
        torch.manual_seed(0)
        out[f"timm:{name}"], out[f"shapes:{name}"] = _groups(
            timm.create_model(name).eval(), torch.randn(1, 3, 224, 224))
    for name in TORCHVISION:
        size = 299 if name == "inception_v3" else 224
        torch.manual_seed(0)
        out[f"tv:{name}"] = _groups(getattr(torchvision.models, name)().eval(),
                                    torch.randn(1, 3, size, size))[0]
    return out


def compare(old: dict[str, object], new: dict[str, object]) -> list[str]:
    """The entries whose groups (or shapes) differ."""
    return [key for key in sorted(set(old) | set(new)) if repr(old.get(key)) != repr(new.get(key))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write the dump here")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("OLD", "NEW"))
    args = parser.parse_args()
    if args.out:
        data = dump()
        tmp = args.out.with_suffix(args.out.suffix + ".tmp")
        tmp.write_bytes(pickle.dumps(data))
        tmp.replace(args.out)
        print(f"{len(data)} entries, {sum(len(v) for v in data.values())} groups and nodes -> {args.out}")
    if args.compare:
        old, new = (pickle.loads(p.read_bytes()) for p in args.compare)
        differ = compare(old, new)
        print(f"{len(differ)} of {len(set(old) | set(new))} entries differ" +
              (": " + ", ".join(differ) if differ else ""))
        return 1 if differ else 0
    if not (args.out or args.compare):
        parser.error("give --out, --compare, or both")
    return 0


if __name__ == "__main__":
    sys.exit(main())
