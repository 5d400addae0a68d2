"""PyTorchVideo's SlowFast (Feichtenhofer et al. 2019): R50 and R101, alpha 4."""

from v3d_flax.preprocessing import PYTORCHVIDEO, PYTORCHVIDEO_ROUNDING, Recipe
from v3d_flax.records.resnet50 import bottleneck_stages
from v3d_flax.registry import ModelSpec, Published, register_model
from v3d_flax.weights import pytorchvideo_weights

# --- architecture: the tables and rules both frameworks' model files build from ---

SLOWFAST_ALPHA = 4  # frame-rate ratio fast / slow of the published models
SLOWFAST_CONV_A_KT = {"slow": (1, 1, 3, 3), "fast": (3, 3, 3, 3)}  # conv_a's temporal kernel in res2..res5
# name -> SlowFast arguments: the ResNet depth and the fast-to-slow lateral convs' temporal kernel.
SLOWFAST_MODELS = {"slowfast_r50": dict(depth=50, fusion_kernel=7), "slowfast_r101": dict(depth=101, fusion_kernel=5)}


def slowfast_stages(depth: int, beta_inv: int, fusion_ratio: int):
    """Per stage res2..res5: (blocks, spatial stride, slow (dim_in, dim_inner, dim_out), fast (...)):
    the fast pathway `beta_inv` x thinner, the slow one's input widened by the channels fused from it."""
    return [(blocks, 1 if i == 0 else 2, (dim_in + dim_in * fusion_ratio // beta_inv, dim_inner, dim_out),
             (dim_in // beta_inv, dim_inner // beta_inv, dim_out // beta_inv))
            for i, (blocks, dim_in, dim_inner, dim_out) in enumerate(bottleneck_stages(depth))]


# --- records ---


def _zoo_weights(name: str, recipe: Recipe) -> tuple:
    """The PyTorchVideo model-zoo checkpoints of `name` (its 8x8 test recipe: `recipe`)."""
    if name == "slowfast_r101":
        return (pytorchvideo_weights("kinetics400", "kinetics/SLOWFAST_8x8_R101.pyth", top1=77.90, top5=93.27),)
    return (
        pytorchvideo_weights("kinetics400", "kinetics/SLOWFAST_8x8_R50.pyth", top1=76.94, top5=92.69),
        # 4 slow frames at stride 16: 32 fast frames at stride 2, alpha 8, lateral convs 5x1x1 (PySlowFast's
        # SLOWFAST_4x16_R50 config; with them the model has the zoo's 34.48 M parameters)
        pytorchvideo_weights("kinetics400_4x16", "kinetics/SLOWFAST_4x16_R50.pyth", top1=75.34, top5=91.89,
                             recipe=recipe.with_overrides(alpha=8), model_kwargs={"alpha": 8, "fusion_kernel": 5}),
        pytorchvideo_weights("ssv2", "ssv2/SLOWFAST_8x8_R50.pyth", dataset="Something-Something v2", num_classes=174,
                             views="1 clip x 3 crops", top1=61.68, top5=86.92, recipe=recipe.with_overrides(clips=1),
                             notes="fine-tuned from Kinetics-400"),
        pytorchvideo_weights("charades", "charades/SLOWFAST_8x8_R50.pyth", dataset="Charades", num_classes=157,
                             mean_ap=37.24, notes="fine-tuned from Kinetics-400"))


for _name, _published in (("slowfast_r50", Published(34.57, 65.71, 400, "PyTorchVideo model zoo")),
                          ("slowfast_r101", None)):
    _recipe = Recipe(frames=32, rate=2, resize=256, crop=256, clips=10, crops=3, pathways=2, alpha=SLOWFAST_ALPHA,
                     **PYTORCHVIDEO_ROUNDING)
    register_model(ModelSpec(
        name=_name, factory=f"v3d_flax.models.slowfast:{_name}", clip=(32, 256, 256), recipe=_recipe,
        normalization=PYTORCHVIDEO, classifier="blocks.6.proj",
        head_pool_kernel=((8, 7, 7), (32, 7, 7)),  # (slow, fast) at the 256 test crop
        sources=("v3d", "pytorchvideo"), published=_published, weights=_zoo_weights(_name, _recipe)))
