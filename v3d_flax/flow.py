"""TV-L1 optical flow in JAX: OpenCV's `DualTVL1OpticalFlow`, batched over frame pairs and jittable.

The dual TV-L1 method with a coarse-to-fine pyramid and warping (Zach, Pock and Bischof 2007;
Sanchez, Meinhardt-Llopis and Facciolo, IPOL 2013), step for step as OpenCV's CPU implementation:
grey frames as `cvtColor(RGB2GRAY)` makes them from uint8, a pyramid of bilinear downscales by
`scale_step` down to 16 pixels, bicubic warping with zero outside the frame, a 5x5 median filter of
the flow before each outer iteration, and OpenCV's stopping rule (the squared update summed over the
frame below `epsilon**2` times its area), which is data-dependent, so the loops are
`lax.while_loop`s; under `vmap` each pair keeps its own iteration count.

    flow = v3d_flax.flow.optical_flow(frames)        # (T, H, W, 3) uint8 -> (T-1, H, W, 2), x then y, pixels
    i3d_input = v3d_flax.flow.i3d_flow_input(flow)   # clipped to [-20, 20] px, scaled to [-1, 1]
"""

from __future__ import annotations

import dataclasses
import functools
import jax
import jax.numpy as jnp
import numpy as np

_MIN_PYRAMID_SIDE = 16
I3D_FLOW_BOUND = 20.0


@dataclasses.dataclass(frozen=True)
class TVL1:
    """The solver's parameters, named and defaulted as OpenCV's `DualTVL1OpticalFlow_create`.

    `lambda_` is OpenCV's `lambda`; `inner_iterations` its `innnerIterations`.
    """

    tau: float = 0.25
    lambda_: float = 0.15
    theta: float = 0.3
    nscales: int = 5
    warps: int = 5
    epsilon: float = 0.01
    inner_iterations: int = 30
    outer_iterations: int = 10
    scale_step: float = 0.8
    gamma: float = 0.0
    median_filtering: int = 5

    def __post_init__(self):
        if self.median_filtering not in (0, 1, 3, 5):
            raise ValueError(f"median_filtering must be 0, 1 (off), 3 or 5, as OpenCV's medianBlur on float "
                             f"frames takes; got {self.median_filtering}")
        for name in ("nscales", "warps", "inner_iterations", "outer_iterations"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.scale_step < 1:
            raise ValueError(f"scale_step must be in (0, 1), got {self.scale_step}")


def grey(frames: jax.Array) -> jax.Array:
    """(..., 3) RGB frames -> (...) float32 grey in [0, 255], rounded as `cv2.cvtColor(RGB2GRAY)` on uint8.

    uint8 frames give OpenCV's values exactly (its 15-bit fixed-point weights); float frames are read
    as [0, 1] (OpenCV's float convention) and rounded to uint8 first, because a grey image that is not
    rounded moves TV-L1's flow by pixels.
    """
    frames = jnp.asarray(frames)
    if frames.shape[-1] != 3:
        raise ValueError(f"expected RGB frames (..., 3), got shape {frames.shape}")
    if jnp.issubdtype(frames.dtype, jnp.floating):
        frames = jnp.clip(jnp.round(frames * 255.0), 0, 255)
    rgb = frames.astype(jnp.int32)
    y = (rgb[..., 0] * 9798 + rgb[..., 1] * 19235 + rgb[..., 2] * 3735 + (1 << 14)) >> 15
    return y.astype(jnp.float32)


def pyramid_sizes(height: int, width: int, nscales: int, scale_step: float) -> list[tuple[int, int]]:
    """The (height, width) of each pyramid level, finest first, as OpenCV builds them."""
    sizes = [(height, width)]
    for _ in range(1, nscales):
        h, w = sizes[-1]
        h, w = round(h * scale_step), round(w * scale_step)  # cvRound, half to even as Python's round
        if h < _MIN_PYRAMID_SIDE or w < _MIN_PYRAMID_SIDE:
            break
        sizes.append((h, w))
    return sizes


def _linear_taps(n_in: int, n_out: int, scale: float):
    """Source indices and weights of OpenCV's INTER_LINEAR resize along one axis (half-pixel centres)."""
    pos = (np.arange(n_out) + 0.5) * scale - 0.5
    lo = np.floor(pos).astype(np.int64)
    frac = pos - lo
    frac[lo < 0], lo[lo < 0] = 0.0, 0
    frac[lo >= n_in - 1], lo[lo >= n_in - 1] = 0.0, n_in - 1
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, (1.0 - frac).astype(np.float32), frac.astype(np.float32)


def resize_linear(image: jax.Array, size: tuple[int, int], scale: tuple[float, float] | None = None) -> jax.Array:
    """`cv2.resize(image, size, interpolation=INTER_LINEAR)` of (..., H, W) float images.

    `scale` is the source step per output pixel (OpenCV's 1/fx, 1/fy when they are given); by default
    input size / output size.
    """
    h_in, w_in = image.shape[-2:]
    sy, sx = scale if scale is not None else (h_in / size[0], w_in / size[1])
    x0, x1, wx0, wx1 = _linear_taps(w_in, size[1], sx)
    y0, y1, wy0, wy1 = _linear_taps(h_in, size[0], sy)
    rows = image[..., x0] * wx0 + image[..., x1] * wx1
    return rows[..., y0, :] * wy0[:, None] + rows[..., y1, :] * wy1[:, None]


def _cubic_weights(t: jax.Array) -> list[jax.Array]:
    """OpenCV's bicubic kernel (a = -0.75) at the four taps around a fractional offset t in [0, 1)."""
    a = -0.75
    w0 = ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a
    w1 = ((a + 2) * t - (a + 3)) * t * t + 1
    w2 = ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1
    return [w0, w1, w2, 1 - w0 - w1 - w2]


def remap_cubic(images: jax.Array, map_x: jax.Array, map_y: jax.Array) -> jax.Array:
    """`cv2.remap(image, map_x, map_y, INTER_CUBIC)` (zero outside) of (C, H, W) images at (H, W) maps."""
    c, h, w = images.shape
    ix, iy = jnp.floor(map_x), jnp.floor(map_y)
    wx, wy = _cubic_weights(map_x - ix), _cubic_weights(map_y - iy)
    ix, iy = ix.astype(jnp.int32), iy.astype(jnp.int32)
    flat = images.reshape(c, h * w)
    out = jnp.zeros_like(images)
    for j in range(4):
        yy = iy + (j - 1)
        row = jnp.zeros_like(images)
        for i in range(4):
            xx = ix + (i - 1)
            inside = (xx >= 0) & (xx < w) & (yy >= 0) & (yy < h)
            taps = jnp.take(flat, (jnp.clip(yy, 0, h - 1) * w + jnp.clip(xx, 0, w - 1)).reshape(-1), axis=1)
            row = row + jnp.where(inside, taps.reshape(c, h, w), 0.0) * wx[i]
        out = out + row * wy[j]
    return out


def _batcher_pairs(n: int) -> list[tuple[int, int]]:
    """Comparators of Batcher's odd-even merge sort of n (a power of two) wires."""
    pairs, p = [], 1
    while p < n:
        k = p
        while k >= 1:
            for j in range(k % p, n - k, 2 * k):
                for i in range(min(k, n - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return pairs


@functools.lru_cache(maxsize=None)
def _median_network(m: int):
    """A min/max network whose output is the median of m inputs (m odd): Batcher's sort of the next
    power of two, padded with -inf/+inf that are resolved statically, pruned to what the median needs.
    Returns (ops, output id): op (min id or None, max id or None, a id, b id); inputs are ids 0..m-1."""
    n = 1 << (m - 1).bit_length()
    low = (n - m) // 2
    wire: list = ["lo"] * low + list(range(m)) + ["hi"] * (n - m - low)
    ops, next_id = [], m
    for a, b in _batcher_pairs(n):
        wa, wb = wire[a], wire[b]
        if wa == "lo" or wb == "hi":  # already in order
            continue
        if wa == "hi" or wb == "lo":  # a swap known in advance
            wire[a], wire[b] = wb, wa
            continue
        ops.append((next_id, next_id + 1, wa, wb))
        wire[a], wire[b] = next_id, next_id + 1
        next_id += 2
    needed, kept = {wire[low + m // 2]}, []
    for lo_id, hi_id, a, b in reversed(ops):
        keep_lo, keep_hi = lo_id in needed, hi_id in needed
        if keep_lo or keep_hi:
            kept.append((lo_id if keep_lo else None, hi_id if keep_hi else None, a, b))
            needed |= {a, b}
    return tuple(reversed(kept)), wire[low + m // 2]


def median_blur(image: jax.Array, ksize: int) -> jax.Array:
    """`cv2.medianBlur` of an (H, W) float image (edges replicated), by a min/max network XLA fuses."""
    r = ksize // 2
    h, w = image.shape
    padded = jnp.pad(image, r, mode="edge")
    values = {i * ksize + j: padded[i:i + h, j:j + w] for i in range(ksize) for j in range(ksize)}
    ops, out = _median_network(ksize * ksize)
    for lo_id, hi_id, a, b in ops:
        if lo_id is not None:
            values[lo_id] = jnp.minimum(values[a], values[b])
        if hi_id is not None:
            values[hi_id] = jnp.maximum(values[a], values[b])
    return values[out]


def centered_gradient(image: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Central differences halved, one-sided (still halved) at the borders, as OpenCV's TV-L1."""
    p = jnp.pad(image, 1, mode="edge")
    return 0.5 * (p[1:-1, 2:] - p[1:-1, :-2]), 0.5 * (p[2:, 1:-1] - p[:-2, 1:-1])


def forward_gradient(image: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Forward differences, zero in the last column (x) and last row (y)."""
    dx = jnp.pad(image[:, 1:] - image[:, :-1], ((0, 0), (0, 1)))
    dy = jnp.pad(image[1:, :] - image[:-1, :], ((0, 1), (0, 0)))
    return dx, dy


def divergence(v1: jax.Array, v2: jax.Array) -> jax.Array:
    """Backward differences with zero before the first row and column (the adjoint of OpenCV's pairing)."""
    return (v1 - jnp.pad(v1[:, :-1], ((0, 0), (1, 0)))) + (v2 - jnp.pad(v2[:-1, :], ((1, 0), (0, 0))))


def _one_scale(i0, i1, u, params: TVL1):
    """OpenCV's procOneScale: `warps` warpings, each iterated to the stopping rule. u: (K, H, W), K = 2 or 3."""
    h, w = i0.shape
    k = u.shape[0]
    scaled_epsilon = np.float32(params.epsilon * params.epsilon * h * w)
    l_t = np.float32(params.lambda_ * params.theta)
    taut = np.float32(params.tau / params.theta)
    theta, gamma = np.float32(params.theta), np.float32(params.gamma)
    i1x, i1y = centered_gradient(i1)
    grid_x = jnp.arange(w, dtype=jnp.float32)[None, :]
    grid_y = jnp.arange(h, dtype=jnp.float32)[:, None]

    def warp_step(_, carry):
        u, p = carry
        i1w, i1wx, i1wy = remap_cubic(jnp.stack([i1, i1x, i1y]), grid_x + u[0], grid_y + u[1])
        grad = i1wx * i1wx + i1wy * i1wy
        rho_c = i1w - i1wx * u[0] - i1wy * u[1] - i0
        coeffs = [i1wx, i1wy, jnp.full_like(grad, gamma)][:k]
        safe_grad = jnp.where(grad > np.finfo(np.float32).eps, grad, 1.0)

        def inner_step(state):
            u, p, _, n = state
            rho = rho_c + (i1wx * u[0] + i1wy * u[1])
            if k == 3:
                rho = rho + gamma * u[2]
            fi = jnp.where(grad > np.finfo(np.float32).eps, -rho / safe_grad, 0.0)
            step = jnp.where(rho < -l_t * grad, l_t, jnp.where(rho > l_t * grad, -l_t, fi))
            v = jnp.stack([u[c] + step * coeffs[c] for c in range(k)])
            u_new = v + theta * jnp.stack([divergence(p[c, 0], p[c, 1]) for c in range(k)])
            error = jnp.sum((u_new - u) ** 2)
            du = jnp.stack([jnp.stack(forward_gradient(u_new[c])) for c in range(k)])  # (K, 2, H, W)
            p = (p + taut * du) / (1.0 + taut * jnp.hypot(du[:, 0], du[:, 1]))[:, None]
            return u_new, p, error, n + 1

        def outer_step(state):
            u, p, error, n = state
            if params.median_filtering > 1:
                u = u.at[:2].set(jnp.stack([median_blur(u[c], params.median_filtering) for c in range(2)]))
            u, p, error, _ = jax.lax.while_loop(
                lambda s: (s[2] > scaled_epsilon) & (s[3] < params.inner_iterations), inner_step, (u, p, error, 0))
            return u, p, error, n + 1

        # the error carries from one outer iteration to the next, as in OpenCV: once an inner loop has
        # converged, this warping is done
        start = (u, p, jnp.float32(np.finfo(np.float32).max), 0)
        u, p, _, _ = jax.lax.while_loop(
            lambda s: (s[2] > scaled_epsilon) & (s[3] < params.outer_iterations), outer_step, start)
        return u, p

    p = jnp.zeros((k, 2, h, w), jnp.float32)  # the dual variables restart at zero on each scale
    u, _ = jax.lax.fori_loop(0, params.warps, warp_step, (u, p))
    return u


def tvl1_pair(i0: jax.Array, i1: jax.Array, params: TVL1 = TVL1()) -> jax.Array:
    """Flow (H, W, 2), x then y in pixels, from grey frame i0 to i1 ((H, W) float32 in [0, 255])."""
    h, w = i0.shape
    if h < 3 or w < 3:
        raise ValueError(f"TV-L1 needs frames of at least 3x3 pixels, got {h}x{w}")
    sizes = pyramid_sizes(h, w, params.nscales, params.scale_step)
    step = 1.0 / params.scale_step
    pyramid = [(i0, i1)]
    for size in sizes[1:]:
        pyramid.append(tuple(resize_linear(im, size, (step, step)) for im in pyramid[-1]))
    channels = 3 if params.gamma != 0 else 2
    u = jnp.zeros((channels,) + sizes[-1], jnp.float32)
    for level in range(len(sizes) - 1, -1, -1):
        u = _one_scale(*pyramid[level], u, params)
        if level:
            u = resize_linear(u, sizes[level - 1])
            u = u.at[:2].multiply(np.float32(step))
    return jnp.moveaxis(u[:2], 0, -1)


@functools.partial(jax.jit, static_argnames=("params",))
def optical_flow(frames: jax.Array, params: TVL1 = TVL1()) -> jax.Array:
    """TV-L1 flow between consecutive frames: (..., T, H, W, 3) RGB -> (..., T-1, H, W, 2), x then y, pixels.

    uint8 frames, or float frames in [0, 1]; any leading batch axes. Jitted; under `vmap` or a batch
    each frame pair stops on its own as OpenCV's loop would.
    """
    frames = jnp.asarray(frames)
    if frames.ndim < 4 or frames.shape[-4] < 2:
        raise ValueError(f"expected (..., T, H, W, 3) RGB frames with T >= 2, got shape {frames.shape}")
    g = grey(frames)
    lead = g.shape[:-3]
    t, h, w = g.shape[-3:]
    g = g.reshape((-1, t, h, w))
    first, second = g[:, :-1].reshape(-1, h, w), g[:, 1:].reshape(-1, h, w)
    flow = jax.vmap(lambda a, b: tvl1_pair(a, b, params))(first, second)
    return flow.reshape(lead + (t - 1, h, w, 2))


def i3d_flow_input(flow: jax.Array, bound: float = I3D_FLOW_BOUND) -> jax.Array:
    """I3D's flow input from pixel flow: clipped to [-bound, bound] and divided by bound, x then y channel."""
    return jnp.clip(flow, -bound, bound) / bound


def quantize_flow(flow, bound: float = I3D_FLOW_BOUND) -> np.ndarray:
    """(..., 2) pixel flow -> uint8 127 + round(127 f / bound) per component, clipped to the bound: how a
    precomputed-flow dataset stores it (zero motion is exactly 127; one level is bound / 127 px)."""
    f = np.clip(np.asarray(flow, np.float32), -bound, bound)
    return (127 + np.round(f * (127 / bound))).astype(np.uint8)


def mean_endpoint_error(flow: jax.Array | np.ndarray, reference: jax.Array | np.ndarray) -> float:
    """Mean Euclidean distance between two (..., 2) flow fields, in pixels."""
    d = np.asarray(flow, np.float64) - np.asarray(reference, np.float64)
    return float(np.mean(np.sqrt(np.sum(d * d, axis=-1))))


def mean_magnitude(flow: jax.Array | np.ndarray) -> float:
    """Mean length of the flow vectors of a (..., 2) field, in pixels."""
    f = np.asarray(flow, np.float64)
    return float(np.mean(np.sqrt(np.sum(f * f, axis=-1))))


__all__ = ["TVL1", "grey", "optical_flow", "tvl1_pair", "i3d_flow_input", "quantize_flow", "mean_endpoint_error",
           "mean_magnitude",
           "pyramid_sizes", "resize_linear", "remap_cubic", "median_blur", "I3D_FLOW_BOUND"]
