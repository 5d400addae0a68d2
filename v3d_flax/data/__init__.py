"""Datasets and the input pipeline.

    from v3d_flax import data
    from v3d_flax.preprocessing import TORCHVISION_KINETICS      # or a model record's: model_spec(name).normalization
    info = data.dataset_info("v3d_synthetic_motion")            # builds the embedded dataset on first use
    batches = data.train_batches("v3d_synthetic_motion", data_dir=None, global_batch_size=16, num_frames=16,
                                 crop_size=32, normalization=TORCHVISION_KINETICS, seed=0)
    batch = next(batches)                                         # {"video": (16, 16, 32, 32, 3), "label": (16,)}

Metrics need only numpy; the dataset functions import TensorFlow on first use.
"""

from __future__ import annotations

import importlib

from v3d_flax import extras
from v3d_flax.data.metrics import VideoMetrics, topk_correct, video_metrics

DEFAULT_DATASET = "v3d_synthetic_motion"

_LAZY = {
    "train_batches": "pipeline", "eval_batches": "pipeline", "TrainOrder": "pipeline",
    "dataset_info": "sources", "prepare": "sources", "open_source": "sources", "DatasetInfo": "sources",
    "DatasetNotPreparedError": "sources", "default_data_dir": "sources",
}

__all__ = ["DEFAULT_DATASET", "VideoMetrics", "topk_correct", "video_metrics", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        missing = extras.missing("train", f"v3d_flax.data.{name} (the tfds input pipeline)")
        if missing:
            raise extras.MissingExtraError(missing)
        return getattr(importlib.import_module(f"v3d_flax.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'v3d_flax.data' has no attribute {name!r}")
