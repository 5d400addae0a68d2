"""port.inflate_2d: a torchvision 2D ResNet-50 state_dict into c2d_r50 / i3d_r50 / slow_r50.

The 2D reference is built here from torch layers with torchvision's module names (torchvision is
not a dependency): conv1, bn1, layerN.j.{conv,bn}{1,2,3}, layerN.j.downsample.{0,1}, fc.
'Boring video' property (a clip of one repeated frame): c2d_r50 has no temporal kernels, so its
logits equal the 2D network's exactly. i3d_r50 / slow_r50 convolve over time with zero padding:
their feature maps equal the 2D network's only at the positions whose temporal receptive field
stays inside the clip; the test checks those positions and that a border position differs.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from torch import nn

import v3d_flax
from parity import flax_model_without_init, jitted_forward, ncdhw_to_ndhwc, randomize_batchnorm, rel_err
from v3d_flax import port
from v3d_flax.port.inflate import inflate_kernel


class Bottleneck2d(nn.Module):
    def __init__(self, cin, width, stride):
        super().__init__()
        cout = width * 4
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet50_2d(nn.Module):
    """torchvision's resnet50 (v1.5) layout and names."""

    def __init__(self, num_classes=1000):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for n, (depth, width, stride) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512), (1, 2, 2, 2)), 1):
            blocks = []
            for j in range(depth):
                blocks.append(Bottleneck2d(cin, width, stride if j == 0 else 1))
                cin = width * 4
            setattr(self, f"layer{n}", nn.Sequential(*blocks))
        self.fc = nn.Linear(2048, num_classes)

    def feature_map(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x):
        return self.fc(self.feature_map(x).mean((2, 3)))


@pytest.fixture(scope="module")
def resnet2d():
    torch.manual_seed(0)
    model = ResNet50_2d(num_classes=7)
    with torch.no_grad():  # larger weights than the default init, so every layer's output matters
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(2.0)
    randomize_batchnorm(model, 0)
    model.eval()
    return model


def _frame_and_clip(t, size, seed=0):
    frame = np.random.RandomState(seed).randn(1, 3, size, size).astype(np.float32)
    clip = np.repeat(frame[:, :, None], t, axis=2)  # NCDHW, every frame the same
    return frame, jnp.asarray(ncdhw_to_ndhwc(clip))


def _inflated(name, state_dict, num_classes=7):
    model = flax_model_without_init(name, num_classes=num_classes)  # NaN until inflated: all must land
    port.inflate_2d(model, state_dict, source="imagenet-2d")
    model.eval()
    return model


def test_torchvision_resnet50_naming_and_size():
    sd = ResNet50_2d().state_dict()
    assert len(sd) == 320  # 161 parameters + 159 BN buffers, as torchvision's resnet50
    assert sum(v.numel() for k, v in sd.items() if not k.endswith(("running_mean", "running_var",
                                                                     "num_batches_tracked"))) == 25_557_032
    for key in ("conv1.weight", "bn1.running_var", "layer1.0.downsample.0.weight", "layer3.5.bn3.weight",
                "layer4.2.conv2.weight", "fc.bias"):
        assert key in sd


def test_inflate_kernel_repeats_and_divides():
    k = np.random.RandomState(0).randn(4, 3, 3, 3).astype(np.float32)
    big = inflate_kernel(k, 5)
    assert big.shape == (4, 3, 5, 3, 3)
    np.testing.assert_allclose(big[:, :, 2], k / 5, rtol=1e-7)
    np.testing.assert_allclose(big.sum(2), k, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="4-D"):
        inflate_kernel(big, 2)


@pytest.mark.parametrize("name", ["c2d_r50", "i3d_r50", "slow_r50"])
def test_every_tensor_is_fed(resnet2d, name):
    """All 320 tensors land, kernels inflated to the model's temporal extent, the rest copied."""
    sd = resnet2d.state_dict()
    model = _inflated(name, sd)
    got = port.to_torch(model)
    head = "blocks.5" if name == "slow_r50" else "blocks.6"
    np.testing.assert_array_equal(got[f"{head}.proj.weight"].numpy(), sd["fc.weight"].numpy())
    np.testing.assert_array_equal(got["blocks.0.norm.running_var"].numpy(), sd["bn1.running_var"].numpy())
    stem_t = {"c2d_r50": 1, "i3d_r50": 5, "slow_r50": 1}[name]
    np.testing.assert_allclose(got["blocks.0.conv.weight"].numpy(),
                               np.repeat(sd["conv1.weight"].numpy()[:, :, None], stem_t, 2) / stem_t, rtol=1e-6)
    res4 = "blocks.4" if name != "slow_r50" else "blocks.3"
    conv_a = got[f"{res4}.res_blocks.0.branch2.conv_a.weight"].numpy()
    np.testing.assert_allclose(conv_a.sum(2), sd["layer3.0.conv1.weight"].numpy()[:, :, 0, 0][..., None, None],
                               rtol=1e-5, atol=1e-7)


def test_c2d_boring_video_gives_the_2d_logits(resnet2d):
    frame, clip = _frame_and_clip(4, 64)
    model = _inflated("c2d_r50", resnet2d.state_dict())
    with torch.no_grad():
        ref = resnet2d(torch.from_numpy(frame)).numpy()
    with jax.default_matmul_precision("float32"):
        got, = jitted_forward(model, clip, "__call__")
    assert rel_err(ref, got) < 1e-4


# Exact positions on a boring clip (every temporal conv pads with zeros, radius kT // 2):
# slow_r50: time is never strided; conv_a is 3-tap in res4 (6 blocks) and res5 (3): radius 9, so with
#   20 frames the outputs at t = 9, 10 see no padding anywhere in their receptive field.
# i3d_r50: stem radius 2 and res2 radius 3 (3-tap conv_a in all 3 blocks) before the (2, 1, 1) pool,
#   then res3 (3,1,3,1) 2 + res4 (3,1,3,1,3,1) 3 + res5 (1,3,1) 1 = 6 after it: pooled position p
#   needs frames 2(p - 6) - 5 .. 2(p + 6) + 1 + 5 inside 0 .. 39, i.e. p = 9, 10 for 40 frames.
@pytest.mark.parametrize("name,frames,exact", [("slow_r50", 20, (9, 10)), ("i3d_r50", 40, (9, 10))])
def test_temporal_models_match_2d_away_from_the_borders(resnet2d, name, frames, exact):
    frame, clip = _frame_and_clip(frames, 32)
    model = _inflated(name, resnet2d.state_dict())
    with torch.no_grad():
        ref = ncdhw_to_ndhwc(resnet2d.feature_map(torch.from_numpy(frame)).numpy()[:, :, None])[:, 0]
    with jax.default_matmul_precision("float32"):
        fmap, = jitted_forward(model, clip, "forward_map")
    assert fmap.shape[1] == (frames if name == "slow_r50" else frames // 2)
    for t in exact:
        assert rel_err(ref, fmap[:, t]) < 1e-4, t
    # The clip's ends see zero padding at every temporal conv and differ. (Just outside `exact` the
    # padding enters through a single chain of edge taps and may stay below float32 noise, so the
    # test claims exactness inside and a difference at the ends only.)
    for t in (0, fmap.shape[1] - 1):
        assert rel_err(ref, fmap[:, t]) > 1e-3, t


def test_head_false_keeps_the_models_classifier(resnet2d):
    model = flax_model_without_init("slow_r50", num_classes=400)
    before = np.asarray(model.blocks[-1].proj.kernel[...]).copy()
    stem_before = np.asarray(model.blocks[0].conv.kernel[...]).copy()
    with pytest.raises(port.PortError, match="fc.weight"):  # 7 classes into 400: all or nothing
        port.inflate_2d(model, resnet2d.state_dict())
    np.testing.assert_array_equal(np.asarray(model.blocks[0].conv.kernel[...]), stem_before)
    report = port.inflate_2d(model, resnet2d.state_dict(), head=False)
    assert sorted(report.missing) == ["blocks.5.proj.bias", "blocks.5.proj.weight"]
    np.testing.assert_array_equal(np.asarray(model.blocks[-1].proj.kernel[...]), before)
    np.testing.assert_array_equal(port.to_torch(model)["blocks.1.res_blocks.2.branch2.norm_c.weight"].numpy(),
                                  resnet2d.state_dict()["layer1.2.bn3.weight"].numpy())


def test_a_head_of_another_size_asks_for_head_false():
    with torch.device("meta"):  # names and shapes only
        shapes = {k: v.shape for k, v in ResNet50_2d(num_classes=1000).state_dict().items()}
    sd = {k: np.zeros(s, np.float32) for k, s in shapes.items()}
    model = nnx.eval_shape(lambda: v3d_flax.create_model("slow_r50", num_classes=10, rngs=nnx.Rngs(0)))
    with pytest.raises(port.PortError, match="pass head=False") as err:
        port.inflate_2d(model, sd)
    assert [m.split(" ")[0] for m in err.value.mismatched] == ["fc.weight", "fc.bias"]


def test_bad_input_is_refused_and_leaves_the_model_untouched(resnet2d):
    model = flax_model_without_init("c2d_r50", num_classes=7)
    before = port.to_torch(model)
    sd = dict(resnet2d.state_dict())
    sd["layer5.0.conv1.weight"] = torch.zeros(1)
    del sd["layer2.1.bn2.running_mean"]
    sd["layer1.0.conv2.weight"] = torch.zeros(64, 64, 5, 5)
    with pytest.raises(port.PortError) as err:
        port.inflate_2d(model, sd)
    msg = str(err.value)
    assert "layer5.0.conv1.weight" in msg and "blocks.3.res_blocks.1.branch2.norm_b.running_mean" in msg
    assert "layer1.0.conv2.weight" in msg
    after = port.to_torch(model)
    for k in before:  # NaN-filled: compared with NaNs equal
        np.testing.assert_array_equal(after[k].numpy(), before[k].numpy(), err_msg=k)
    with pytest.raises(ValueError, match="no table for model 'r3d_18'"):
        port.inflate_2d(nnx.eval_shape(lambda: v3d_flax.create_model("r3d_18", num_classes=7, rngs=nnx.Rngs(0))), sd)
    with pytest.raises(ValueError, match="unknown inflation source"):
        port.inflate_2d(model, sd, source="timm")


def test_load_weights_and_the_cli_inflate(resnet2d, tmp_path):
    """The "imagenet-2d" source through port.load_weights (strict or not) and `convert --source imagenet-2d`."""
    from v3d_flax import checkpoints, convert

    sd = resnet2d.state_dict()
    model = flax_model_without_init("c2d_r50", num_classes=400)
    with pytest.raises(port.PortError, match="pass head=False"):
        port.load_weights(model, sd, source="imagenet-2d")
    report = port.load_weights(model, sd, source="imagenet-2d", strict=False)  # all but the 7-class head
    assert [m.split(" ")[0] for m in report.mismatched] == ["fc.weight", "fc.bias"] and not report.missing
    expected = port.to_torch(_inflated("c2d_r50", sd))
    got = port.to_torch(model)
    assert np.array_equal(got["blocks.4.res_blocks.0.branch2.conv_a.weight"].numpy(),
                          expected["blocks.4.res_blocks.0.branch2.conv_a.weight"].numpy())
    src = tmp_path / "resnet50.pth"
    torch.save(sd, src)
    dest = tmp_path / "c2d.safetensors"
    assert convert.main(["--model", "c2d_r50", "--source", "imagenet-2d", "--from", str(src), "--to", str(dest)]) == 0
    loaded = port.to_torch(checkpoints.load_model("c2d_r50", dest))  # 7 classes, read from the 2D fc
    assert loaded.keys() == expected.keys()
    for key in expected:
        np.testing.assert_array_equal(loaded[key].numpy(), expected[key].numpy(), err_msg=key)
