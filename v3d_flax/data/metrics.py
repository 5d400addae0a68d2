"""Clip-level and video-level accuracy from per-view logits.

Clip level: every view (clip x crop) is scored on its own. Video level: the softmax probabilities of
all the views of a video are averaged and the video is scored once (the convention behind published
"video top-1" numbers, e.g. torchvision's 5-clip and PySlowFast's 10x3-view accuracies).
Top-k counts a prediction as correct when fewer than k classes score strictly higher than the true
one; k is capped at the number of classes.
"""

from __future__ import annotations

import numpy as np


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def topk_correct(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """bool (N,): the true label ranks within the top k (ties resolved in the prediction's favour)."""
    true = np.take_along_axis(scores, labels[:, None], axis=1)
    return (scores > true).sum(axis=1) < min(k, scores.shape[1])


def video_metrics(logits, labels, video_index, mask=None) -> dict:
    """Clip-level and video-level top-1/top-5 from per-view logits (N, C), labels (N,), video ids (N,).

    Rows with mask False (batch padding) are ignored. Returns clip_top1, clip_top5, video_top1,
    video_top5 (fractions), num_clips (views scored) and num_videos. ValueError when the views of one
    video disagree on its label or nothing is left.
    """
    logits = np.asarray(logits, np.float64)
    labels, video_index = np.asarray(labels).astype(np.int64), np.asarray(video_index).astype(np.int64)
    if logits.ndim != 2 or labels.shape != (len(logits),) or video_index.shape != (len(logits),):
        raise ValueError(f"expected logits (N, C) with labels (N,) and video_index (N,), got {logits.shape}, "
                         f"{labels.shape}, {video_index.shape}")
    if mask is not None:
        keep = np.asarray(mask).astype(bool)
        logits, labels, video_index = logits[keep], labels[keep], video_index[keep]
    if not len(logits):
        raise ValueError("no views to score (every row was masked out)")
    videos, inverse = np.unique(video_index, return_inverse=True)
    video_labels = np.full(len(videos), -1, np.int64)
    video_labels[inverse] = labels
    if np.any(video_labels[inverse] != labels):
        bad = videos[np.unique(inverse[video_labels[inverse] != labels])][:5]
        raise ValueError(f"views of the same video carry different labels (videos {bad.tolist()})")
    probs = _softmax(logits)
    video_probs = np.zeros((len(videos), logits.shape[1]))
    np.add.at(video_probs, inverse, probs)
    video_probs /= np.bincount(inverse)[:, None]
    return {"clip_top1": float(topk_correct(logits, labels, 1).mean()),
            "clip_top5": float(topk_correct(logits, labels, 5).mean()),
            "video_top1": float(topk_correct(video_probs, video_labels, 1).mean()),
            "video_top5": float(topk_correct(video_probs, video_labels, 5).mean()),
            "num_clips": int(len(labels)), "num_videos": int(len(videos))}


class VideoMetrics:
    """Accumulates eval batches (logits plus the batch's label, video_index and mask) for `video_metrics`."""

    def __init__(self):
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def update(self, logits, labels, video_index, mask=None) -> None:
        """Add one batch; masked-out rows are dropped."""
        logits, labels, video_index = np.asarray(logits), np.asarray(labels), np.asarray(video_index)
        keep = np.ones(len(labels), bool) if mask is None else np.asarray(mask).astype(bool)
        self._parts.append((logits[keep], labels[keep], video_index[keep]))

    def result(self) -> dict:
        """`video_metrics` of everything added so far."""
        if not self._parts:
            raise ValueError("no batches were added")
        logits, labels, videos = (np.concatenate(p) for p in zip(*self._parts))
        return video_metrics(logits, labels, videos)
