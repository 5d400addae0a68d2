"""The embedded dataset "v3d_synthetic_motion": videos whose class is decided only by motion.

Each clip is a cluttered scene drifting at the clip's velocity, as under a camera pan: a periodic
random colour texture with a few rectangles of random size and colour riding on it, plus a few
rectangles of the same kind that stay fixed in the frame (occluders on the lens) and do not move.
The class is the velocity: direction (right, left, down, up) x speed (1 or 2 pixels per frame).
Everything lives on a torus (what leaves one edge re-enters at the opposite one), the texture's
random phases make its distribution shift-invariant, and object positions start uniformly at
random, so every single frame has exactly the same distribution in every class; only the change
between frames tells the classes apart. A 2D network applied frame by frame therefore stays at
chance, while a 3D network learns the task. (Whole-field drift rather than a few objects moving
over a static background: with only small objects moving, a small 3D network needed many times
more steps than a CPU run can afford.)

Horizontal flips change the label (right <-> left), so the dataset's metadata carries
`hflip_label_map`, the label each class becomes under a horizontal flip; the input pipeline flips
and maps the label (see `v3d_flax.data.pipeline`).

Frames are stored as raw uint8 tensors (`tfds.features.Tensor(..., encoding=BYTES)`) rather than
`tfds.features.Video`, whose PNG-encoded frames would cost far more to decode than the training step
on a CPU. Every example is rendered from its own seed (config seed, split, index), so the build is
deterministic: the same config gives byte-identical files. The default config builds in seconds.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

NAME = "v3d_synthetic_motion"

# (name, (dy, dx)) unit steps; rows grow downwards.
DIRECTIONS: tuple[tuple[str, tuple[int, int]], ...] = (
    ("right", (0, 1)), ("left", (0, -1)), ("down", (1, 0)), ("up", (-1, 0)))
SPEEDS: tuple[tuple[str, int], ...] = (("slow", 1), ("fast", 2))
_SPLIT_IDS = {"train": 1, "test": 2}


def class_names() -> list[str]:
    """'direction_speed' for label = direction_index * len(SPEEDS) + speed_index."""
    return [f"{d}_{s}" for d, _ in DIRECTIONS for s, _ in SPEEDS]


def velocity(label: int) -> tuple[int, int]:
    """(dy, dx) in pixels per frame of class `label`."""
    (_, (dy, dx)), (_, speed) = DIRECTIONS[label // len(SPEEDS)], SPEEDS[label % len(SPEEDS)]
    return dy * speed, dx * speed


def hflip_label_map() -> list[int]:
    """The label each class takes when the video is mirrored left-right (right <-> left)."""
    names = [d for d, _ in DIRECTIONS]
    mirror = {"right": "left", "left": "right"}
    return [names.index(mirror.get(names[label // len(SPEEDS)], names[label // len(SPEEDS)])) * len(SPEEDS)
            + label % len(SPEEDS) for label in range(len(names) * len(SPEEDS))]


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Periodic clutter: random-phase colour noise with wavelengths from 3 to 12 pixels.

    Random phases make its distribution invariant to (circular) translation, so a shifted copy is
    distributed exactly like the original.
    """
    f = np.fft.fftfreq(size) * size
    radius = np.hypot(*np.meshgrid(f, f, indexing="ij"))
    band = ((radius >= size / 12) & (radius <= size / 3)).astype(np.float64)
    spectrum = band[..., None] * np.exp(2j * np.pi * rng.random((size, size, 3)))
    field = np.real(np.fft.ifft2(spectrum, axes=(0, 1)))
    return field / max(field.std(), 1e-12) * 45.0 + rng.uniform(70.0, 185.0, 3)


def render_clip(rng: np.random.Generator, label: int, num_frames: int, size: int) -> np.ndarray:
    """One clip of class `label`: uint8 (num_frames, size, size, 3)."""
    dy, dx = velocity(label)
    scene = _texture(rng, size)
    n_moving, n_static = int(rng.integers(2, 4)), int(rng.integers(1, 4))
    n = n_moving + n_static
    heights, widths = rng.integers(4, 9, n), rng.integers(4, 9, n)
    colours = rng.uniform(0.0, 255.0, (n, 3))
    y0, x0 = rng.integers(0, size, n), rng.integers(0, size, n)
    moving = np.arange(n) < n_moving
    order = rng.permutation(n)  # drawing order, independent of which objects move
    t = np.arange(num_frames)
    grid = np.arange(size)
    frames = np.stack([np.roll(scene, (dy * i, dx * i), axis=(0, 1)) for i in t])
    for k in order:
        ys = y0[k] + dy * t * moving[k]                                              # (T,)
        xs = x0[k] + dx * t * moving[k]
        in_rows = (grid[None, :] - ys[:, None]) % size < heights[k]                  # (T, size)
        in_cols = (grid[None, :] - xs[:, None]) % size < widths[k]
        mask = in_rows[:, :, None] & in_cols[:, None, :]                             # (T, size, size)
        frames[mask] = colours[k]
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)


def example_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator that renders example `index` of `split`: independent of generation order."""
    return np.random.default_rng([seed, _SPLIT_IDS[split], index])


def example_label(index: int) -> int:
    """Labels cycle through the classes, so every split is balanced."""
    return index % (len(DIRECTIONS) * len(SPEEDS))


@dataclasses.dataclass(frozen=True)
class SyntheticMotionSettings:
    """What a config renders: clip length and size, examples per split, seed."""

    num_frames: int = 20
    size: int = 20
    num_train: int = 1600
    num_test: int = 400
    seed: int = 0


class SyntheticMotionConfig(tfds.core.BuilderConfig):
    """A BuilderConfig carrying `SyntheticMotionSettings`."""

    def __init__(self, *, settings: SyntheticMotionSettings = SyntheticMotionSettings(), **kwargs):
        kwargs.setdefault("description", f"{settings}")
        super().__init__(**kwargs)
        if settings.num_frames < 1 or settings.size < 9 or settings.num_train < 1 or settings.num_test < 1:
            raise ValueError(f"invalid synthetic-motion settings {settings}: need num_frames >= 1, size >= 9 "
                             "and at least one example per split")
        self.settings = settings


class V3dSyntheticMotion(tfds.core.GeneratorBasedBuilder):
    """Synthetic motion-only video classification (registered in tfds as "v3d_synthetic_motion")."""

    VERSION = tfds.core.Version("2.0.0")
    RELEASE_NOTES = {
        "1.0.0": "8 classes (4 directions x 2 speeds), 20x36x36 uint8 clips, 1600 train / 400 test.",
        "2.0.0": "20x20x20 clips: the CPU runs' 16-pixel crops (scale jitter 18-23 px) keep the motion's pixel "
                 "speed; 36-pixel frames were shrunk about 2x, blurring the texture and halving the speeds.",
    }
    BUILDER_CONFIGS = [
        SyntheticMotionConfig(name="default"),
        # For smoke runs and tests: "v3d_synthetic_motion/tiny".
        SyntheticMotionConfig(name="tiny", settings=SyntheticMotionSettings(num_frames=12, size=24, num_train=64,
                                                                            num_test=16)),
    ]

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # tfds 4.9 finds this itself through `importlib_resources`, which it does not install on Python >= 3.9.
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        s = self.builder_config.settings
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "video": tfds.features.Tensor(shape=(s.num_frames, s.size, s.size, 3), dtype=np.uint8,
                                              encoding=tfds.features.Encoding.BYTES),
                "label": tfds.features.ClassLabel(names=class_names()),
            }),
            supervised_keys=("video", "label"),
            metadata=tfds.core.MetadataDict(hflip_label_map=hflip_label_map()),
        )

    def _split_generators(self, dl_manager):
        s = self.builder_config.settings
        return {"train": self._generate_examples("train", s.num_train),
                "test": self._generate_examples("test", s.num_test)}

    def _generate_examples(self, split: str, count: int):
        s = self.builder_config.settings
        for index in range(count):
            label = example_label(index)
            clip = render_clip(example_rng(s.seed, split, index), label, s.num_frames, s.size)
            yield index, {"video": clip, "label": label}
