"""``mask3d-ros-train``: train Mask3D from a YAML config (``config/train/``), resumable, and export
the weights the node loads."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from mask3d_ros.training.train import TrainConfig, export_weights, train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mask3d-ros-train", description="Train Mask3D from a YAML config.")
    parser.add_argument("config", type=Path, help="training config, e.g. config/train/train_tabletop.yaml; "
                        "relative paths inside it are taken from the current directory")
    parser.add_argument("--resume", type=Path, help="continue from a checkpoint written by this command")
    parser.add_argument("--iterations", type=int, help="override the config's iteration count")
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:1 ...")
    parser.add_argument("--out-dir", help="override the config's output directory")
    parser.add_argument("--export", type=Path, help="also write the final weights (no optimizer state) here, "
                        "with the config's inference settings (topk, dbscan_eps, duplicate_iou, smooth_*)")
    parser.add_argument("--source", type=Path, help="with --export-only: the checkpoint to re-export (a training"
                        " or an exported one; default: the config's out_dir/last.ckpt)")
    parser.add_argument("--export-only", action="store_true", help="do not train: export the config's "
                        "out_dir/last.ckpt to --export (after re-tuning its inference settings)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice; use 1 when "
                        "other processes share the cores: waiting threads slow every step down)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = TrainConfig.from_yaml(args.config)
    for name in ("iterations", "device", "out_dir"):
        if getattr(args, name) is not None:
            setattr(config, name, getattr(args, name))
    out_dir = Path.cwd() / config.out_dir
    if args.export_only:
        if not args.export:
            parser.error("--export-only needs --export FILE")
        export_weights(args.source or out_dir / "last.ckpt", args.export, config)
        print(f"exported weights to {args.export} ({args.export.stat().st_size / 1e6:.1f} MB)")
        return 0
    ckpt = train(config, base=Path.cwd(), resume=args.resume)
    minutes = ckpt["train_seconds"] / 60
    first, last = ckpt["history"][0]["loss"], np.mean([h["loss"] for h in ckpt["history"][-20:]])
    print(f"trained {config.iterations} iterations in {minutes:.1f} min; loss {first:.3f} -> {last:.3f}; "
          f"checkpoint {out_dir / 'last.ckpt'}")
    if args.export:
        export_weights(out_dir / "last.ckpt", args.export, config)
        print(f"exported weights to {args.export} ({args.export.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
