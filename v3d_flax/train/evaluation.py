"""Validation: clip-level and video-level accuracy over CLIPS x CROPS views per video."""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from v3d_flax import two_stream
from v3d_flax.data.metrics import VideoMetrics
from v3d_flax.train.mesh import batch_sharding, replicated, to_global
from v3d_flax.train.steps import make_eval_step


def _local_copy(x: jax.Array) -> np.ndarray:
    """A host copy of a replicated (possibly multi-process) array."""
    return np.asarray(x.addressable_data(0))


class Evaluator:
    """Runs the eval split through the jitted eval step; returns one metrics.jsonl record.

    `normalization` is the model's input normalisation (its record's), `info` the dataset's
    `DatasetInfo`; the batch is sharded over `mesh` and the state is the replicated one. `input_fn`
    makes the model's input from the clips (flow, two streams: `v3d_flax.two_stream`); a two-stream
    model's record scores the fused logits and adds each stream's (`rgb_top1`, `flow_video_top1`, ...).
    """

    def __init__(self, defs, config, mesh, info, normalization, input_fn=None):
        self.config, self.mesh, self.info, self.normalization = config, mesh, info, normalization
        step = make_eval_step(defs, precision=config.precision, input_fn=input_fn)
        rep, data = replicated(mesh), batch_sharding(mesh)

        def eval_batch(state, batch):
            outputs = step(state, batch)
            logits = outputs["fused"] if isinstance(outputs, dict) else outputs
            streams = {k: v for k, v in outputs.items() if k != "fused"} if isinstance(outputs, dict) else {}
            labels = batch["label"].astype(jnp.int32)
            loss = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1)[:, 0]
            return logits, loss, batch["label"], batch["video_index"], batch["mask"], streams

        self._step = jax.jit(eval_batch, in_shardings=(rep, data), out_shardings=rep)

    def num_batches(self) -> int:
        """Batches in one evaluation pass (every process yields this many)."""
        c, local = self.config, self.config.eval_batch_size // jax.process_count()
        clips, crops = c.eval_views
        return math.ceil(math.ceil(self.info.num_eval / jax.process_count()) * clips * crops / local)

    def __call__(self, state: dict, *, step: int, should_stop=None) -> dict | None:
        """The eval record of `state` at `step`; None if `should_stop()` became true between batches
        (single process only: with several, every process must run the same batches)."""
        from tqdm.auto import tqdm

        from v3d_flax import data

        c = self.config
        clips, crops = c.eval_views
        batches = data.eval_batches(c.dataset, data_dir=c.data_dir, batch_size=c.eval_batch_size,
                                    num_frames=two_stream.clip_frames(c.modality, c.num_frames, self.info.modality),
                                    crop_size=c.crop_size,
                                    normalization=two_stream.pipeline_normalization(c.modality, self.normalization,
                                                                                    self.info.modality),
                                    clips=clips, crops=crops, process_index=jax.process_index(),
                                    process_count=jax.process_count())
        show = c.progress and jax.process_index() == 0
        scores, stream_scores, loss_sum = VideoMetrics(), {}, 0.0
        t0, n = time.perf_counter(), 0
        if jax.process_count() > 1:
            should_stop = None
        for local in tqdm(batches, desc="eval", total=self.num_batches(), leave=False, disable=not show or None):
            if should_stop is not None and should_stop():
                return None
            batch = to_global({k: local[k] for k in ("video", "label", "video_index", "mask")}, self.mesh)
            logits, loss, label, video, mask, streams = jax.tree.map(_local_copy, self._step(state, batch))
            keep = mask.astype(bool)
            scores.update(logits, label, video, keep)
            for name, stream_logits in streams.items():
                stream_scores.setdefault(name, VideoMetrics()).update(stream_logits, label, video, keep)
            loss_sum += float(loss[keep].astype(np.float64).sum())
            n += int(keep.sum())
        if not n:
            raise ValueError(f"the evaluation split of {c.dataset!r} yielded no batches")
        m = scores.result()
        seconds = time.perf_counter() - t0
        per_stream = {}
        for name, stream in stream_scores.items():
            r = stream.result()
            per_stream.update({f"{name}_top1": r["clip_top1"], f"{name}_video_top1": r["video_top1"]})
        return {**per_stream, "step": step, "split": "eval", "loss": loss_sum / n, "top1": m["clip_top1"],
                "top5": m["clip_top5"],
                "lr": None, "clips_per_sec": n / seconds if seconds > 0 else 0.0, "views": f"{clips}x{crops}",
                "video_top1": m["video_top1"], "video_top5": m["video_top5"], "num_clips": m["num_clips"],
                "num_videos": m["num_videos"]}
