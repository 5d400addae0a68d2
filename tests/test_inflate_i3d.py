"""Inflating torchvision's 2D GoogLeNet (Inception-v1) into I3D, and I3D's 'boring video' property.

The 2D reference is written here from torch layers with torchvision's GoogLeNet module names
(torchvision is not a dependency). It pads TensorFlow 'SAME', as the TF-slim Inception-v1 that
DeepMind inflated: torchvision's own GoogLeNet pads its 7x7 stride-2 stem symmetrically (3, 3)
where 'SAME' pads (2, 3), so its outputs differ from an inflated I3D's at the image borders.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from parity import flax_model_without_init, jitted_forward, randomize_batchnorm, rel_err
from v3d_flax import port


def _same_pads(size, kernel, stride):
    pads = []
    for n, k, s in zip(reversed(size), reversed(kernel), reversed(stride)):
        total = max((math.ceil(n / s) - 1) * s + k - n, 0)
        pads += [total // 2, total - total // 2]
    return pads


class BasicConv2d(nn.Module):
    def __init__(self, cin, cout, k, s=1):
        super().__init__()
        self.k, self.s = (k, k), (s, s)
        self.conv = nn.Conv2d(cin, cout, k, s, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(F.pad(x, _same_pads(x.shape[2:], self.k, self.s)))))


class MaxPool2dSame(nn.Module):
    def __init__(self, k, s):
        super().__init__()
        self.k, self.s = (k, k), (s, s)

    def forward(self, x):
        return F.max_pool2d(F.pad(x, _same_pads(x.shape[2:], self.k, self.s), value=float("-inf")), self.k, self.s)


class Inception(nn.Module):
    def __init__(self, cin, c1, c3r, c3, c5r, c5, pool_proj):
        super().__init__()
        self.branch1 = BasicConv2d(cin, c1, 1)
        self.branch2 = nn.Sequential(BasicConv2d(cin, c3r, 1), BasicConv2d(c3r, c3, 3))
        self.branch3 = nn.Sequential(BasicConv2d(cin, c5r, 1), BasicConv2d(c5r, c5, 3))  # 3x3, as torchvision
        self.branch4 = nn.Sequential(MaxPool2dSame(3, 1), BasicConv2d(cin, pool_proj, 1))

    def forward(self, x):
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class GoogLeNet2d(nn.Module):
    """Inception-v1 in 2D with torchvision's names (conv1.conv, inception3a.branch2.1.bn, fc, ...)."""

    STAGES = ("conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a", "inception3b", "maxpool3",
              "inception4a", "inception4b", "inception4c", "inception4d", "inception4e", "maxpool4",
              "inception5a", "inception5b")

    def __init__(self, num_classes=1000):
        super().__init__()
        self.conv1, self.maxpool1 = BasicConv2d(3, 64, 7, 2), MaxPool2dSame(3, 2)
        self.conv2, self.conv3, self.maxpool2 = BasicConv2d(64, 64, 1), BasicConv2d(64, 192, 3), MaxPool2dSame(3, 2)
        self.inception3a = Inception(192, 64, 96, 128, 16, 32, 32)
        self.inception3b = Inception(256, 128, 128, 192, 32, 96, 64)
        self.maxpool3 = MaxPool2dSame(3, 2)
        self.inception4a = Inception(480, 192, 96, 208, 16, 48, 64)
        self.inception4b = Inception(512, 160, 112, 224, 24, 64, 64)
        self.inception4c = Inception(512, 128, 128, 256, 24, 64, 64)
        self.inception4d = Inception(512, 112, 144, 288, 32, 64, 64)
        self.inception4e = Inception(528, 256, 160, 320, 32, 128, 128)
        self.maxpool4 = MaxPool2dSame(2, 2)
        self.inception5a = Inception(832, 256, 160, 320, 32, 128, 128)
        self.inception5b = Inception(832, 384, 192, 384, 48, 128, 128)
        self.fc = nn.Linear(1024, num_classes)

    def features(self, x):
        for name in self.STAGES:
            x = getattr(self, name)(x)
        return x

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


def _googlenet_state(num_classes=1000, seed=0):
    torch.manual_seed(seed)
    net = GoogLeNet2d(num_classes)
    randomize_batchnorm(net, seed)
    state = dict(net.eval().state_dict())
    # torchvision's ImageNet file also holds the two auxiliary classifiers, which I3D has no use for.
    state["aux1.conv.conv.weight"] = torch.zeros(128, 512, 1, 1)
    state["aux1.fc1.weight"], state["aux1.fc2.bias"] = torch.zeros(1024, 2048), torch.zeros(num_classes)
    state["aux2.conv.bn.running_mean"] = torch.zeros(128)
    return net, state


def test_googlenet_inflates_into_i3d():
    net, state = _googlenet_state()
    fm = flax_model_without_init("i3d", num_classes=1000)  # NaN until inflated: every weight must land
    assert not port.inflate_2d(fm, state, source="torchvision")  # the former name of "imagenet-2d"
    w2d = net.conv1.conv.weight.detach().numpy()  # (64, 3, 7, 7) -> Flax (7, 7, 7, 3, 64), each slice / 7
    kernel = np.asarray(fm.Conv3d_1a_7x7.conv3d.kernel[...])
    for t in range(7):
        np.testing.assert_allclose(kernel[t], np.transpose(w2d, (2, 3, 1, 0)) / 7, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(fm.Mixed_5c.b2b.bn.mean[...]), net.inception5b.branch3[1].bn.running_mean.numpy())
    np.testing.assert_array_equal(np.asarray(fm.logits.conv3d.kernel[...]).reshape(1024, 1000), net.fc.weight.detach().numpy().T)


def test_googlenet_inflation_without_head_keeps_other_classes():
    _, state = _googlenet_state()
    fm = flax_model_without_init("i3d", num_classes=400)
    before = np.asarray(fm.logits.conv3d.kernel[...]).copy()
    with pytest.raises(port.PortError, match="logits.conv3d.weight"):  # 1000 ImageNet classes into 400
        port.inflate_2d(fm, state)
    port.inflate_2d(fm, state, head=False)
    np.testing.assert_array_equal(before, np.asarray(fm.logits.conv3d.kernel[...]))
    del state["inception4c.branch3.1.conv.weight"]
    with pytest.raises(port.PortError, match=r"Mixed_4d\.b2b\.conv3d\.weight"):
        port.inflate_2d(fm, state, head=False)


def test_boring_video_gives_the_2d_network_output():
    """A clip of one repeated frame: I3D's Mixed_5c map and per-time logits equal the 2D network's
    features and logits, exactly (float32 rounding), at time positions whose receptive field
    stays inside the clip. Near the clip's ends the temporal 'SAME' zero padding makes them differ,
    as in DeepMind's I3D."""
    net, state = _googlenet_state(num_classes=10, seed=1)
    fm = flax_model_without_init("i3d", num_classes=10)
    port.inflate_2d(fm, state)
    fm.eval()
    frame = np.random.RandomState(0).randn(1, 3, 32, 32).astype(np.float32)
    with torch.no_grad():
        ref_map = net.features(torch.from_numpy(frame)).numpy()[:, :, 0, 0]  # 32x32 -> 1x1 at Mixed_5c
        ref_logits = net(torch.from_numpy(frame)).numpy()
    clip = np.repeat(np.transpose(frame, (0, 2, 3, 1))[:, None], 96, axis=1)  # (1, 96, 32, 32, 3)
    with jax.default_matmul_precision("float32"):
        got_map, got_logits = jitted_forward(fm, jnp.asarray(clip), "forward_map", "time_logits")
        got_map = got_map[:, :, 0, 0]  # (1, 12, 1024); logits (1, 11, 10)
    assert got_map.shape == (1, 12, 1024) and got_logits.shape == (1, 11, 10)
    for t in (5, 6):  # the centre of the 12 Mixed_5c positions
        assert rel_err(ref_map, got_map[:, t]) < 1e-5
    assert rel_err(ref_logits, got_logits[:, 5]) < 1e-5  # averages Mixed_5c positions 5 and 6
    assert rel_err(ref_map, got_map[:, 0]) > 1e-3  # the first position sees the zero padding
