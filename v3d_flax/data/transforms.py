"""Per-clip TensorFlow transforms: frame selection and decoding, scale jitter, crops, flip, normalisation.

Randomness enters only as explicit uniforms in [0, 1) computed by the caller from the seed and the
sample's position, so a clip is a pure function of (example, uniforms, settings).

Spatial conventions (PySlowFast / torchvision, expressed relative to the crop size so that they
hold at any crop): training resizes the short side to a random length in
[TRAIN_SCALE[0], TRAIN_SCALE[1]] x crop (256-320 for a 224 crop) and takes a random crop x crop
window; one-crop evaluation resizes the short side to EVAL_SCALE x crop (128 for 112, as
torchvision's video ResNets) and takes the centre; three-crop evaluation resizes the short side to
the crop size and takes the two ends and the centre of the long side (PySlowFast's 3 crops).
"""

from __future__ import annotations

import tensorflow as tf

TRAIN_SCALE = (8 / 7, 10 / 7)
EVAL_SCALE = 8 / 7
# Precomputed flow (`python -m v3d_flax.data flow`) is stored as uint8 127 + round(127 f / bound) per
# component: read as [0, 1] like frames, zero motion is FLOW_ZERO.
FLOW_ZERO = 127 / 255


def resized_flow(before, after):
    """Flow frames in [0, 1] (the quantised uint8 read as frames) resized from `before` (T, H, W, 2) to
    `after`: each component scales with its axis, so the vectors stay in pixels of the new size."""
    scale = tf.cast(tf.shape(after)[1:3], tf.float32) / tf.cast(tf.shape(before)[1:3], tf.float32)
    scale = tf.stack([scale[1], scale[0]])  # x then y
    return tf.clip_by_value((after - FLOW_ZERO) * scale + FLOW_ZERO, 0.0, 2 * FLOW_ZERO)


def mirrored_flow(frames):
    """Flow frames mirrored left-right: the x component changes sign."""
    frames = tf.reverse(frames, axis=[2])
    return tf.concat([2 * FLOW_ZERO - frames[..., :1], frames[..., 1:]], axis=-1)


def frame_indices(length, num_frames: int, frame_stride: int, start):
    """int32 (num_frames,): start, start + stride, ...; indices past the end repeat the last frame."""
    idx = tf.cast(start, tf.int32) + tf.range(num_frames, dtype=tf.int32) * frame_stride
    return tf.minimum(idx, tf.maximum(tf.cast(length, tf.int32) - 1, 0))


def clip_start(length, num_frames: int, frame_stride: int, u):
    """First frame of a window of num_frames at frame_stride at fraction u in [0, 1) of the free range."""
    span = (num_frames - 1) * frame_stride + 1
    free = tf.maximum(tf.cast(length, tf.int32) - span + 1, 1)
    return tf.minimum(tf.cast(tf.floor(u * tf.cast(free, tf.float32)), tf.int32), free - 1)


def select_frames(video, indices, encoded: bool):
    """uint8 (len(indices), H, W, 3): the chosen frames, decoding only those when they are encoded."""
    if encoded:
        frames = tf.map_fn(lambda b: tf.io.decode_image(b, channels=3, expand_animations=False),
                           tf.gather(video, indices), fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))
    else:
        frames = tf.gather(video, indices)
        if frames.shape[-1] == 1:
            frames = tf.image.grayscale_to_rgb(frames)
    return frames


def resize_short_side(frames, short_side):
    """float32 frames in [0, 1] resized (bilinear, antialiased) so that min(H, W) == short_side.

    The antialiasing filter only differs from plain bilinear when shrinking, and costs 5-13x more
    (docs/performance.md): enlarging uses the plain kernel (the same values to float rounding), and
    frames already at the size are returned as they are."""
    shape = tf.shape(frames)
    h, w = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    scale = tf.cast(short_side, tf.float32) / tf.minimum(h, w)
    size = tf.stack([tf.maximum(tf.cast(tf.round(h * scale), tf.int32), short_side),
                     tf.maximum(tf.cast(tf.round(w * scale), tf.int32), short_side)])
    same = tf.reduce_all(tf.equal(size, shape[1:3]))
    shrink = tf.logical_or(size[0] < shape[1], size[1] < shape[2])
    return tf.case([(same, lambda: frames),
                    (shrink, lambda: tf.image.resize(frames, size, method="bilinear", antialias=True))],
                   default=lambda: tf.image.resize(frames, size, method="bilinear", antialias=False))


def to_unit_float(frames):
    """uint8 -> float32 in [0, 1]."""
    return tf.image.convert_image_dtype(frames, tf.float32)


def crop_at(frames, crop_size: int, fy, fx):
    """The crop_size x crop_size window whose top-left corner is at fractions (fy, fx) of the free range."""
    shape = tf.shape(frames)
    y = tf.cast(tf.round(fy * tf.cast(shape[1] - crop_size, tf.float32)), tf.int32)
    x = tf.cast(tf.round(fx * tf.cast(shape[2] - crop_size, tf.float32)), tf.int32)
    return frames[:, y:y + crop_size, x:x + crop_size, :]


def train_clip(video, encoded: bool, u, *, num_frames: int, crop_size: int, frame_stride: int, flip: bool,
               flow: bool = False):
    """A training clip, float32 (num_frames, crop, crop, 3) in [0, 1], and whether it was mirrored.

    u: float32 (5,) uniforms in [0, 1): temporal position, scale, crop y, crop x, flip. `flow`: the
    video is quantised flow (2 channels): resizing scales its vectors and mirroring negates x.
    """
    length = tf.shape(video)[0]
    start = clip_start(length, num_frames, frame_stride, u[0])
    frames = select_frames(video, frame_indices(length, num_frames, frame_stride, start), encoded)
    lo, hi = TRAIN_SCALE[0] * crop_size, TRAIN_SCALE[1] * crop_size
    short = tf.maximum(tf.cast(tf.round(lo + u[1] * (hi - lo)), tf.int32), crop_size)
    frames = _resized(to_unit_float(frames), short, flow)
    # Random crop: u in [0, 1) over the free range, with every offset equally likely.
    shape = tf.shape(frames)
    fy = tf.floor(u[2] * tf.cast(shape[1] - crop_size + 1, tf.float32)) / tf.cast(
        tf.maximum(shape[1] - crop_size, 1), tf.float32)
    fx = tf.floor(u[3] * tf.cast(shape[2] - crop_size + 1, tf.float32)) / tf.cast(
        tf.maximum(shape[2] - crop_size, 1), tf.float32)
    frames = crop_at(frames, crop_size, fy, fx)
    mirrored = tf.logical_and(tf.constant(flip), u[4] < 0.5)
    mirror = mirrored_flow if flow else (lambda f: tf.reverse(f, axis=[2]))
    frames = tf.cond(mirrored, lambda: mirror(frames), lambda: frames)
    return tf.ensure_shape(frames, [num_frames, crop_size, crop_size, 2 if flow else 3]), mirrored


def _resized(frames, short_side, flow: bool):
    resized = resize_short_side(frames, short_side)
    return resized_flow(frames, resized) if flow else resized


def eval_views(video, encoded: bool, clip_index, *, clips: int, crops: int, num_frames: int, crop_size: int,
               frame_stride: int, flow: bool = False):
    """float32 (crops, num_frames, crop, crop, 3) in [0, 1]: every crop of clip `clip_index` of `clips`.

    Clips are uniformly spaced: clip c starts at fraction (c + 1/2) / clips of the free range (one
    clip: the centre). crops=1: centre crop; crops=3: both ends and the centre of the long side.
    `flow`: 2-channel quantised flow, whose vectors scale with the resize.
    """
    if crops not in (1, 3):
        raise ValueError(f"crops must be 1 (centre) or 3 (two ends and centre), got {crops}")
    length = tf.shape(video)[0]
    u = (tf.cast(clip_index, tf.float32) + 0.5) / clips
    start = clip_start(length, num_frames, frame_stride, u)
    frames = select_frames(video, frame_indices(length, num_frames, frame_stride, start), encoded)
    short = round(EVAL_SCALE * crop_size) if crops == 1 else crop_size
    frames = _resized(to_unit_float(frames), short, flow)
    if crops == 1:
        views = [crop_at(frames, crop_size, 0.5, 0.5)]
    else:
        shape = tf.shape(frames)
        portrait = shape[1] > shape[2]
        views = [tf.cond(portrait, lambda f=f: crop_at(frames, crop_size, f, 0.5),
                         lambda f=f: crop_at(frames, crop_size, 0.5, f)) for f in (0.0, 0.5, 1.0)]
    return tf.ensure_shape(tf.stack(views), [crops, num_frames, crop_size, crop_size, 2 if flow else 3])


def normalize(frames, mean, std):
    """(frames - mean) / std per RGB channel, frames in [0, 1]."""
    return (frames - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)
