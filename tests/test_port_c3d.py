"""Importing DavideA/c3d-pytorch's Sports-1M C3D weights (c3d.pickle) with source="c3d-sports1m"."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import v3d_flax
import v3d_torch_ref
from parity import flax_model_without_init, ncdhw_to_ndhwc, rel_err
from v3d_flax import port

# c3d.pickle's state_dict: 8 biased 3x3x3 convs, fc6 over pool5's 512x1x4x4 = 8192 features, 487 classes.
_CONVS = [("conv1", 3, 64), ("conv2", 64, 128), ("conv3a", 128, 256), ("conv3b", 256, 256),
          ("conv4a", 256, 512), ("conv4b", 512, 512), ("conv5a", 512, 512), ("conv5b", 512, 512)]
SPORTS1M_KEYS = {
    **{f"{n}.weight": (cout, cin, 3, 3, 3) for n, cin, cout in _CONVS},
    **{f"{n}.bias": (cout,) for n, _, cout in _CONVS},
    "fc6.weight": (4096, 8192), "fc6.bias": (4096,), "fc7.weight": (4096, 4096), "fc7.bias": (4096,),
    "fc8.weight": (487, 4096), "fc8.bias": (487,),
}


@pytest.fixture(scope="module")
def sports1m_file(tmp_path_factory):
    """A file laid out like c3d.pickle (torch.save of the state_dict), random weights."""
    rng = np.random.RandomState(0)
    state = {}
    for key, shape in SPORTS1M_KEYS.items():
        scale = np.sqrt(2.0 / np.prod(shape[1:])) if key.endswith("weight") else 0.01
        state[key] = torch.from_numpy((rng.randn(*shape) * scale).astype(np.float32))
    path = tmp_path_factory.mktemp("c3d") / "c3d.pickle"
    torch.save(state, path)
    return path, state


def test_sports1m_keys_map_onto_default_c3d():
    model = nnx.eval_shape(lambda: v3d_flax.create_model("c3d", num_classes=487, rngs=nnx.Rngs(0)))
    assert port.rename_keys(SPORTS1M_KEYS, "c3d-sports1m", "c3d") == port.torch_shapes(model)
    # 487 Sports-1M classes and the 16x112x112 clip are the factories' defaults in both frameworks.
    from v3d_flax.models.c3d import c3d
    from v3d_torch_ref.models.c3d import c3d as torch_c3d

    assert nnx.eval_shape(lambda: c3d(rngs=nnx.Rngs(0))).fc8.out_features == 487
    assert {k: tuple(v.shape) for k, v in torch_c3d().state_dict().items()} == SPORTS1M_KEYS


def test_sports1m_checkpoint_forward_matches_torch(sports1m_file):
    path, state = sports1m_file
    fm = flax_model_without_init("c3d", num_classes=487)
    assert not port.from_torch(fm, port.load_torch_checkpoint(path), source="c3d-sports1m")
    tm = v3d_torch_ref.create_model("c3d", num_classes=487)
    tm.load_state_dict(state, strict=True)
    tm.eval()
    fm.eval()
    x = np.random.RandomState(1).rand(1, 3, 16, 112, 112).astype(np.float32) * 255.0  # 0..255, as c3d-pytorch feeds it
    with torch.no_grad():
        ref_fc6 = tm.forward_features(torch.from_numpy(x), layer="fc6").numpy()
        ref = tm(torch.from_numpy(x)).numpy()
    with jax.default_matmul_precision("float32"):
        xf = jnp.asarray(ncdhw_to_ndhwc(x))
        got_fc6, got = nnx.jit(lambda m, x: (m.forward_features(x, layer="fc6"), m(x)))(fm, xf)
    assert rel_err(ref_fc6, got_fc6) < 1e-4  # fc6 reads an NDHWC flatten: its columns were permuted
    assert rel_err(ref, got) < 1e-4


def test_sports1m_fc6_columns_are_permuted(sports1m_file):
    """pool5 is 512x1x4x4: torch's fc6 column c*16 + h*4 + w (C, T, H, W order) is Flax row (h*4 + w)*512 + c."""
    path, state = sports1m_file
    fm = flax_model_without_init("c3d", num_classes=487)
    port.from_torch(fm, state, source="c3d-sports1m")
    w_torch = state["fc6.weight"].numpy()
    kernel = np.asarray(fm.fc6.kernel[...])
    for c, t, h, w in [(0, 0, 0, 1), (5, 0, 3, 2), (511, 0, 3, 3), (300, 0, 1, 0)]:
        np.testing.assert_array_equal(kernel[((t * 4 + h) * 4 + w) * 512 + c], w_torch[:, c * 16 + (h * 4 + w)])


def test_sports1m_errors(sports1m_file):
    _, state = sports1m_file
    with pytest.raises(ValueError, match="no key map for model 'r3d_18'"):
        port.from_torch(nnx.eval_shape(lambda: v3d_flax.create_model("r3d_18", num_classes=487, rngs=nnx.Rngs(0))), state,
                        source="c3d-sports1m")
    bigger = nnx.eval_shape(lambda: v3d_flax.create_model("c3d", num_classes=487, crop_size=128, rngs=nnx.Rngs(0)))
    with pytest.raises(port.PortError, match=r"fc6\.weight \(checkpoint \(4096, 8192\), model \(4096, 12800\)\)"):
        port.from_torch(bigger, state, source="c3d-sports1m")
