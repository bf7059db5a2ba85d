#!/usr/bin/env python3
"""Write the synthetic scenes the tabletop model was selected and tuned on, held out of training.

12 ``varied`` frames (seeds 29000-29011) and 12 accumulated maps (seeds 49000-49011); training uses
seeds 20000+ and 40000+. Score a checkpoint on them with the evaluator:

    .venv/bin/python scripts/make_holdout_scenes.py build/holdout_synth
    .venv/bin/mask3d-ros-eval --dataset npz build/holdout_synth/varied/   (and .../map/)
"""
import argparse
from pathlib import Path

from mask3d_ros.datasets import write_scene
from mask3d_ros.synthetic import cached_scenes

HOLDOUT = {"varied": 29000, "map": 49000}
COUNT = 12


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write <kind>/<scene>.npz into")
    args = parser.parse_args()
    for kind, seed in HOLDOUT.items():
        (args.out / kind).mkdir(parents=True, exist_ok=True)
        for scene in cached_scenes(kind, COUNT, seed):
            write_scene(args.out / kind / f"{scene.name}.npz", scene)
        print(f"{COUNT} {kind} scenes in {args.out / kind}")


if __name__ == "__main__":
    main()
