"""PyTorchVideo's bottleneck ResNets: I3D-R50, Slow-R50, C2D-R50, CSN-R101, R(2+1)D-R50."""

from dataclasses import dataclass

from v3d_flax.archfacts import BATCHNORM_KEYS
from v3d_flax.preprocessing import PYTORCHVIDEO, PYTORCHVIDEO_ROUNDING, Recipe
from v3d_flax.registry import ModelSpec, Published, register_model
from v3d_flax.weights import pytorchvideo_weights

# --- architecture: the tables and rules both frameworks' model files build from ---

RESNET_DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}  # bottleneck blocks in res2..res5


def bottleneck_stages(depth: int) -> list[tuple[int, int, int, int]]:
    """(blocks, dim_in, dim_inner, dim_out) of res2..res5 of a bottleneck ResNet-`depth` (64-wide stem,
    outputs 256, 512, 1024, 2048, inner widths a quarter of those)."""
    if depth not in RESNET_DEPTHS:
        raise ValueError(f"depth must be one of {sorted(RESNET_DEPTHS)}, got {depth}")
    stages, dim_in, dim_out = [], 64, 256
    for blocks in RESNET_DEPTHS[depth]:
        stages.append((blocks, dim_in, dim_out // 4, dim_out))
        dim_in, dim_out = dim_out, dim_out * 2
    return stages


@dataclass(frozen=True)
class ArchSpec:
    """What distinguishes the members of PyTorchVideo's ResNet family (`create_resnet`/`create_csn`/
    `create_r2plus1d` as its hub models call them)."""

    depth: int
    stem_kt: int  # temporal kernel of the 7x7 stem conv
    stem_pool: bool  # 1x3x3 stride (1, 2, 2) max-pool at the end of the stem
    stage1_pool: bool  # (2, 1, 1) max-pool after the first stage (inserted as blocks.2)
    conv_a_kt: tuple  # per stage: temporal kernels of conv_a, cycled over the stage's blocks
    conv_b: str  # "spatial" (1x3x3), "depthwise" (3x3x3 channel-separated) or "2plus1d"
    spatial_strides: tuple
    temporal_strides: tuple
    dropout: float = 0.5  # before `proj`; PyTorchVideo's csn_r101 has none


RESNET50_SPECS = {
    "i3d_r50": ArchSpec(50, 5, True, True, ((3,), (3, 1), (3, 1), (1, 3)), "spatial", (1, 2, 2, 2), (1, 1, 1, 1)),
    "slow_r50": ArchSpec(50, 1, True, False, ((1,), (1,), (3,), (3,)), "spatial", (1, 2, 2, 2), (1, 1, 1, 1)),
    "c2d_r50": ArchSpec(50, 1, True, True, ((1,),) * 4, "spatial", (1, 2, 2, 2), (1, 1, 1, 1)),
    "csn_r101": ArchSpec(101, 3, True, False, ((1,),) * 4, "depthwise", (1, 2, 2, 2), (1, 2, 2, 2), dropout=0.0),
    "r2plus1d_r50": ArchSpec(50, 1, False, False, ((1,),) * 4, "2plus1d", (2, 2, 2, 2), (1, 1, 2, 2)),
}


def torchvision_resnet_inflation(stage_blocks: tuple[int, int, int, int], head_block: int) -> list:
    """Inflation rules (`v3d_flax.port.inflate`): torchvision's 2D ResNet (conv1, bn1,
    layerN.j.{conv,bn}{1,2,3}, layerN.j.downsample.{0,1}, fc) onto PyTorchVideo's layout
    (blocks.0.{conv,norm}, blocks.i.res_blocks.j.branch2.{conv,norm}_{a,b,c}, branch1_{conv,norm},
    blocks.H.proj), the stages sitting at `stage_blocks`."""
    rules = [(r"conv1\.weight", "blocks.0.conv.weight"), (rf"bn1\.{BATCHNORM_KEYS}", r"blocks.0.norm.\1")]
    for n, b in enumerate(stage_blocks, start=1):
        for i, part in enumerate("abc", start=1):
            rules += [(rf"layer{n}\.(\d+)\.conv{i}\.weight", rf"blocks.{b}.res_blocks.\1.branch2.conv_{part}.weight"),
                      (rf"layer{n}\.(\d+)\.bn{i}\.{BATCHNORM_KEYS}",
                       rf"blocks.{b}.res_blocks.\1.branch2.norm_{part}.\2")]
        rules += [(rf"layer{n}\.(\d+)\.downsample\.0\.weight", rf"blocks.{b}.res_blocks.\1.branch1_conv.weight"),
                  (rf"layer{n}\.(\d+)\.downsample\.1\.{BATCHNORM_KEYS}",
                   rf"blocks.{b}.res_blocks.\1.branch1_norm.\2")]
    rules.append((r"fc\.(weight|bias)", rf"blocks.{head_block}.proj.\1"))
    return rules


# --- records ---

# name: canonical clip, test recipe (frames, rate), the hub head's fixed AvgPool3d kernel at that clip,
# the classifier's index in `blocks` (after a pool block in the nets that pool time after res2),
# published parameters (millions).
_MODELS = {
    "i3d_r50": ((8, 224, 224), (8, 8), (4, 7, 7), 6, 28.04),
    "slow_r50": ((8, 224, 224), (8, 8), (8, 7, 7), 5, 32.45),
    "c2d_r50": ((8, 224, 224), (8, 8), (4, 7, 7), 6, 24.33),
    "csn_r101": ((32, 224, 224), (32, 2), (4, 7, 7), 5, 22.21),
    "r2plus1d_r50": ((16, 224, 224), (16, 4), (4, 7, 7), 5, 28.11),
}

# the nets torchvision's ImageNet ResNet-50 inflates into: its stages' indices in `blocks`
_INFLATABLE = {"i3d_r50": (1, 3, 4, 5), "slow_r50": (1, 2, 3, 4), "c2d_r50": (1, 3, 4, 5)}


def _zoo_weights(name: str, recipe: Recipe) -> tuple:
    """The PyTorchVideo model-zoo checkpoints of `name` (its test recipe: `recipe`)."""
    kinetics = {"c2d_r50": ("C2D_8x8_R50.pyth", 71.46, 89.68), "i3d_r50": ("I3D_8x8_R50.pyth", 73.27, 90.70),
                "slow_r50": ("SLOW_8x8_R50.pyth", 74.58, 91.63), "csn_r101": ("CSN_32x2_R101.pyth", 77.00, 92.90),
                "r2plus1d_r50": ("R2PLUS1D_16x4_R50.pyth", 76.01, 92.23)}
    file, top1, top5 = kinetics[name]
    weights = [pytorchvideo_weights("kinetics400", f"kinetics/{file}", top1=top1, top5=top5)]
    if name == "slow_r50":
        weights += [
            pytorchvideo_weights("kinetics400_4x16", "kinetics/SLOW_4x16_R50.pyth", top1=72.40, top5=90.18,
                                 recipe=recipe.with_overrides(frames=4, rate=16)),
            pytorchvideo_weights("ssv2", "ssv2/SLOW_8x8_R50.pyth", dataset="Something-Something v2", num_classes=174,
                                 views="1 clip x 3 crops", top1=60.04, top5=85.19,
                                 recipe=recipe.with_overrides(clips=1),
                                 notes="fine-tuned from Kinetics-400"),
            pytorchvideo_weights("charades", "charades/SLOW_8x8_R50.pyth", dataset="Charades", num_classes=157,
                                 mean_ap=34.72, notes="fine-tuned from Kinetics-400")]
    return tuple(weights)


for _name, (_clip, (_frames, _rate), _kernel, _head, _params) in _MODELS.items():
    _rules = {"imagenet-2d": torchvision_resnet_inflation(_INFLATABLE[_name], _head)} if _name in _INFLATABLE else {}
    _recipe = Recipe(frames=_frames, rate=_rate, resize=256, crop=256, clips=10, crops=3, **PYTORCHVIDEO_ROUNDING)
    register_model(ModelSpec(
        name=_name, factory=f"v3d_flax.models.resnet50:{_name}", clip=_clip, recipe=_recipe,
        normalization=PYTORCHVIDEO, classifier=f"blocks.{_head}.proj", head_pool_kernel=_kernel,
        sources=("v3d", "pytorchvideo", *_rules), key_rules=_rules,
        published=Published(_params, None, 400, "PyTorchVideo model zoo"), weights=_zoo_weights(_name, _recipe)))
