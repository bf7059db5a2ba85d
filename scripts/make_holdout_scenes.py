#!/usr/bin/env python3
"""Write the scenes the tabletop model was selected and tuned on, held out of training.

12 ``varied`` frames (seeds 29000-29011) and 12 accumulated maps (seeds 49000-49011); training uses
seeds 20000+ and 40000+. With ``--mosd`` (the mOSD folder), also 16 copy-paste scenes composed only
of the 8 learn/ frames every training config excludes (hosts and pasted objects alike), and 16
denser ones (``copy_paste_dense``: 4-12 objects added, resized, 30 % stacked, as in stage 6's
training source) that come closer to val/'s complex clutter. Score a checkpoint on them with the
evaluator:

    .venv/bin/python scripts/make_holdout_scenes.py build/holdout_synth --mosd ../shared/data/mosd
    .venv/bin/mask3d-ros-eval --dataset npz build/holdout_synth/varied/   (and map/, copy_paste/, copy_paste_dense/)
"""
import argparse
from pathlib import Path

from mask3d_ros.data.datasets import load_mosd, write_scene
from mask3d_ros.data.synthetic import cached_scenes
from mask3d_ros.training.copy_paste import make_scenes

HOLDOUT = {"varied": 29000, "map": 49000}
COUNT = 12
HELD_OUT_LEARN = (3, 11, 19, 23, 27, 31, 36, 42)   # the learn/ frames the training configs exclude
COPY_PASTE_SEED, COPY_PASTE_COUNT = 99, 16
DENSE_SEED = 98
DENSE = {"added": (4, 12), "stacked": 0.3, "scale": (0.8, 1.5), "height_scale": (0.4, 1.6)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write <kind>/<scene>.npz into")
    parser.add_argument("--mosd", type=Path, help="the mOSD folder (with learn/): also write copy-paste scenes")
    args = parser.parse_args()
    sets = {kind: lambda kind=kind, seed=seed: cached_scenes(kind, COUNT, seed) for kind, seed in HOLDOUT.items()}
    if args.mosd:
        frames = [load_mosd(args.mosd / "learn" / f"learn{index}.pcd") for index in HELD_OUT_LEARN]
        sets["copy_paste"] = lambda: make_scenes(frames, COPY_PASTE_COUNT, COPY_PASTE_SEED)
        sets["copy_paste_dense"] = lambda: make_scenes(frames, COPY_PASTE_COUNT, DENSE_SEED, **DENSE)
    for kind, scenes in sets.items():
        (args.out / kind).mkdir(parents=True, exist_ok=True)
        written = 0
        for scene in scenes():
            write_scene(args.out / kind / f"{scene.name}.npz", scene)
            written += 1
        print(f"{written} {kind} scenes in {args.out / kind}")


if __name__ == "__main__":
    main()
