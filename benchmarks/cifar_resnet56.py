"""The paper's ResNet-56 / CIFAR-10 setting, for users who have the data and a GPU.

Catalyst (arXiv 2507.14170) reports ResNet-56 on CIFAR-10 at 93.53% -> 94.00% top-1 with a
2.06x FLOPs reduction. This recipe runs fxprune's job on the same setting: the CIFAR ResNet-56
(16-32-64 channels, projection shortcuts) pre-trained from scratch, opt1 with c0 chosen to meet
--target-macs (default 1/2.06 of the MACs), prune, opt2, fine-tune, export.

    python benchmarks/cifar_resnet56.py --data-dir ~/data            # ~/data/cifar-10-batches-py
    torchrun --nproc-per-node 8 benchmarks/cifar_resnet56.py --data-dir ~/data

It needs hours on one GPU; ``--smoke`` runs one epoch of each stage (the tests use it on a tiny
generated CIFAR-format folder).
"""

from __future__ import annotations

import argparse
import sys

import torch

from fxprune.app.job import Job, JobConfig, init_distributed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", required=True, help="folder holding cifar-10-batches-py/")
    parser.add_argument("--out", default="out/cifar_resnet56")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--target-macs", type=float, default=1 / 2.06)
    parser.add_argument("--smoke", action="store_true", help="one epoch per stage, batch 8")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    epochs = (1, 1, 1) if args.smoke else (200, 100, 100)
    cfg = JobConfig(
        model="zoo:cifar_resnet56", data="cifar10", data_dir=args.data_dir, device=args.device,
        method="catalyst", target_macs=None if args.smoke else args.target_macs,
        pretrain_epochs=epochs[0], opt1_epochs=epochs[1], finetune_epochs=epochs[2],
        batch_size=8 if args.smoke else 128, pretrain_lr=0.1, lr=0.02, gamma=0.02,
        out=args.out,
    )
    init_distributed(cfg.device)
    report = Job(cfg, resume=args.resume).run()
    print(f"ResNet-56 / CIFAR-10: baseline {report['baseline_acc']:.2f}% -> final "
          f"{report['final_acc']:.2f}%, MACs {report['macs_ratio']:.2f}x fewer "
          f"(paper: 93.53% -> 94.00% at 2.06x); report in {args.out}/report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
