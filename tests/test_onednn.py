"""oneDNN convolutions inside XLA (v3d_flax.onednn): bfloat16, jit with donation, vmap, remat, a
mesh of CPU devices (per-shard custom calls, no gathered batch), and the fallback where the
extension cannot be built. Forward and gradient agreement in float32 is in test_conv.py."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from v3d_flax import conv as conv_ops
from v3d_flax import onednn

pytestmark = pytest.mark.skipif(not (jax.default_backend() == "cpu" and onednn.available()),
                                reason="oneDNN convs run on CPU where the extension builds")

KW = dict(strides=(1, 2, 2), padding=((1, 1), (1, 1), (1, 1)), groups=1, dilation=(1, 1, 1))


def _operands(x_shape=(4, 5, 9, 8, 6), k_shape=(3, 3, 3, 6, 8), seed=0):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.standard_normal(x_shape), jnp.float32),
            jnp.asarray(rng.standard_normal(k_shape), jnp.float32) * 0.2)


def _loss(impl, **kw):
    return lambda x, k: jnp.sum(jnp.sin(conv_ops.conv3d(x, k, **(kw or KW), impl=impl)))


def _close(got, want, rtol):
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=rtol,
                               atol=rtol * float(jnp.max(jnp.abs(want))))


@pytest.mark.parametrize("groups", [1, 6])
def test_bfloat16_matches_lax_in_bfloat16(groups):
    x, k = _operands(k_shape=(3, 3, 3, 6 // groups, 6))
    kw = dict(KW, groups=groups)
    xb, kb = x.astype(jnp.bfloat16), k.astype(jnp.bfloat16)
    y = conv_ops.conv3d(xb, kb, **kw, impl="onednn")
    assert y.dtype == jnp.bfloat16
    _close(y, conv_ops.conv3d_lax(x, k, **kw), 2e-2)
    g = jax.grad(_loss("onednn", **kw), argnums=(0, 1))(xb, kb)
    g_ref = jax.grad(_loss("lax", **kw), argnums=(0, 1))(x, k)
    assert [a.dtype for a in g] == [jnp.bfloat16] * 2
    for got, want in zip(g, g_ref):
        _close(got, want, 3e-2)


def test_jit_with_donation_vmap_and_remat_agree_with_lax():
    x, k = _operands()
    want = jax.grad(_loss("lax"), argnums=(0, 1))(x, k)
    donated = jax.jit(jax.grad(_loss("onednn"), argnums=(0, 1)), donate_argnums=(0,))
    for got, ref in zip(donated(x + 0.0, k), want):
        _close(got, ref, 1e-5)
    remat = jax.grad(jax.checkpoint(_loss("onednn")), argnums=(0, 1))(x, k)
    for got, ref in zip(remat, want):
        _close(got, ref, 1e-5)
    # vmap over a leading axis (per-example gradients): one custom call per example
    per_example = jax.vmap(jax.grad(_loss("onednn"), argnums=1), in_axes=(0, None))(x[:, None], k)
    ref = jax.vmap(jax.grad(_loss("lax"), argnums=1), in_axes=(0, None))(x[:, None], k)
    _close(per_example, ref, 1e-5)


def test_mesh_runs_one_custom_call_per_shard_and_sums_the_kernel_gradient():
    script = textwrap.dedent("""
        import json, jax, jax.numpy as jnp, numpy as np
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        from v3d_flax import conv as conv_ops
        kw = dict(strides=(1, 2, 2), padding=((1, 1),) * 3, groups=1, dilation=(1, 1, 1))
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.standard_normal((8, 5, 9, 8, 6)), jnp.float32)
        k = jnp.asarray(rng.standard_normal((3, 3, 3, 6, 8)), jnp.float32) * 0.2
        loss = lambda impl: lambda x, k: jnp.sum(jnp.sin(conv_ops.conv3d(x, k, **kw, impl=impl)))
        mesh = Mesh(np.array(jax.devices()), ("data",))
        xs = jax.device_put(x, NamedSharding(mesh, P("data")))
        ks = jax.device_put(k, NamedSharding(mesh, P()))
        step = jax.jit(jax.value_and_grad(loss("onednn"), argnums=(0, 1)))
        hlo = step.lower(xs, ks).compile().as_text()
        (value, (dx, dk)) = step(xs, ks)
        (v0, (dx0, dk0)) = jax.value_and_grad(loss("lax"), argnums=(0, 1))(x, k)
        err = lambda a, b: float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
        calls = [l for l in hlo.splitlines() if "custom_call_target=\\"v3d_onednn_" in l]
        print(json.dumps({"devices": len(jax.devices()), "all_gather": hlo.count("all-gather"),
                          "all_reduce": hlo.count("all-reduce("), "calls": len(calls),
                          "whole_batch": sum("f32[8," in l for l in calls), "shard": sum("f32[2," in l for l in calls),
                          "dx_sharding": str(dx.sharding.spec), "err": [err(value, v0), err(dx, dx0), err(dk, dk0)]}))
    """)
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="4", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    import json
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["devices"] == 4
    assert r["all_gather"] == 0, "the batch must never be gathered"
    assert r["calls"] == 3 and r["shard"] == 3 and r["whole_batch"] == 0, r  # fwd, bwd-data, -weights on 2 clips
    assert r["all_reduce"] >= 1  # the kernel gradient (and the loss) summed over the shards
    assert r["dx_sharding"] in ("P('data',)", "PartitionSpec('data',)")
    assert max(r["err"]) < 1e-5, r


def test_without_a_compiler_it_warns_once_and_auto_keeps_xla(tmp_path):
    script = textwrap.dedent("""
        import warnings, jax.numpy as jnp
        from v3d_flax import conv as conv_ops, onednn
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            x, k = jnp.ones((1, 4, 8, 8, 8)), jnp.ones((3, 3, 3, 8, 8))
            picks = {conv_ops.select_impl(x, k, strides=(1, 1, 1), groups=1, dilation=(1, 1, 1), impl=i)
                     for i in ("auto", "onednn")}
            y = conv_ops.conv3d(x, k, strides=(1, 1, 1), padding=((1, 1),) * 3, impl="onednn")
        print(sorted(picks), float(y[0, 1, 1, 1, 0]), onednn.available())
        for w in caught:
            print("WARNING", w.message)
    """)
    env = dict(os.environ, CXX=str(tmp_path / "no-such-compiler"), PATH=str(tmp_path), XDG_CACHE_HOME=str(tmp_path),
               JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "['time2d_lax_grad'] 216.0 False", lines
    warns = [line for line in lines if line.startswith("WARNING")]
    assert warns == ["WARNING v3d: oneDNN convolutions unavailable, using XLA's: no C++ compiler found "
                     f"($CXX='{tmp_path / 'no-such-compiler'}', c++, g++)"], lines
    assert not list(tmp_path.glob("v3d/*.so"))


def test_extension_is_cached_per_source_and_library():
    first = onednn.build()
    assert first.parent == onednn.cache_dir() and first.exists()
    assert onednn.build() == first  # cached: not rebuilt
    assert onednn.version().startswith("3.")
