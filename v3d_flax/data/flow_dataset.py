"""Precompute TV-L1 flow of a video dataset into a tfds dataset: `python -m v3d_flax.data flow SOURCE NAME`.

For runs whose device time is better spent on the network than on TV-L1 (CPU runs above all):
every video of SOURCE's training and evaluation splits is decoded, its flow between consecutive
frames computed with `v3d_flax.flow` (OpenCV's TV-L1 at its defaults) and stored as uint8 127 + round(127 f / 20) per component
(`v3d_flax.flow.quantize_flow`: clipped to I3D's 20 pixels, one level 0.16 px) in a feature `flow` of
shape (T - 1, H, W, 2). `train.py --modality flow --dataset NAME` reads it: the pipeline resizes,
crops and flips the flow as it would frames (resizing scales the vectors, mirroring negates x) and
scales it as I3D's flow input. SOURCE's flip metadata (the embedded dataset's right <-> left) carries
over. The dataset is written to a temporary folder first, so a failure leaves nothing behind.
"""

from __future__ import annotations

import os

import numpy as np

from v3d_flax.data.folder import check_new_dataset, store_dataset
from v3d_flax.data.sources import FLOW_KEY, open_source


def video_flow(frames: np.ndarray, pairs_per_call: int = 16) -> np.ndarray:
    """uint8 (T - 1, H, W, 2) quantised flow of uint8 (T, H, W, 3) frames, in calls of a fixed number of
    pairs (the last padded by repeating its last frame) so that videos of any length share one compile."""
    from v3d_flax.flow import optical_flow, quantize_flow

    if len(frames) < 2:
        raise ValueError(f"a video needs at least 2 frames for flow, this one has {len(frames)}")
    out = []
    for start in range(0, len(frames) - 1, pairs_per_call):
        chunk = frames[start:start + pairs_per_call + 1]
        real = len(chunk) - 1
        if real < pairs_per_call:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pairs_per_call - real, axis=0)])
        out.append(np.asarray(optical_flow(chunk))[:real])
    return quantize_flow(np.concatenate(out))


def prepare_flow(source_name: str, name: str, data_dir: str | os.PathLike | None = None, *, pairs_per_call: int = 16,
                 progress=None):
    """Write the flow of every video of `source_name` as the tfds dataset `name` (both in `data_dir`);
    returns its DatasetInfo. `progress(i, n)` is called before each video. ValueError before any
    work for a bad name, an existing dataset or a source that is not RGB video."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    from v3d_flax.data import transforms
    from v3d_flax.data.sources import _root, dataset_info

    root = _root(data_dir)
    check_new_dataset(name, root)
    source = open_source(source_name, data_dir)
    info = source.info
    if info.modality != "rgb":
        raise ValueError(f"{source_name!r} already holds flow; its source RGB dataset is what flow is computed from")
    splits = {split: source.num_examples(split) for split in (info.train_split, info.eval_split)}
    total, done = sum(splits.values()), [0]

    def examples(split):
        reader = source.reader(split)
        for i in range(splits[split]):
            if progress is not None:
                progress(done[0], total)
            done[0] += 1
            video, label = source.parse(tf.constant(reader[i]))
            frames = transforms.select_frames(video, tf.range(tf.shape(video)[0]), source.encoded_frames).numpy()
            yield f"{split}_{i}", {FLOW_KEY: video_flow(frames, pairs_per_call), "label": int(label)}

    features = tfds.features.FeaturesDict({
        FLOW_KEY: tfds.features.Tensor(shape=(None, None, None, 2), dtype=np.uint8, encoding="bytes"),
        "label": tfds.features.ClassLabel(names=list(info.class_names))})
    metadata = {"hflip_label_map": list(info.hflip_label_map)} if info.hflip_label_map is not None else {}
    if not info.flip_ok:
        metadata["hflip"] = False
    store_dataset(name, root, features, {split: examples(split) for split in splits},
                  f"TV-L1 flow (OpenCV's defaults, v3d_flax.flow) of {source_name}, uint8 127 + 127 f / 20; prepared "
                  f"by python -m v3d_flax.data flow", metadata)
    return dataset_info(name, root)
