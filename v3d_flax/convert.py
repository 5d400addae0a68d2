"""Checkpoint conversion between PyTorch and Flax, and from any other checkpoint source.

    python -m v3d_flax.convert --model NAME --from PATH_OR_WEIGHTS --to PATH [--source SOURCE] [--force]

Inputs: a checkpoint of any `v3d_flax.port` source (--source: PyTorch files in a publisher's naming,
DeepMind's TensorFlow I3D, 2D ImageNet networks to inflate), or a Flax checkpoint: a .safetensors of
the flattened NNX state ("/"-joined paths, written by this tool), an orbax directory written by this
tool, or a training workdir / checkpoint step directory of `v3d_flax.train` (model weights are taken,
optimizer state ignored), or the model's pretrained weights by name (`python -m
v3d_flax.weights`: downloaded, verified, cached). Outputs by the --to name: .pth/.pt/.pickle/.pkl -> a PyTorch state_dict in
v3d_torch_ref naming (loads with strict=True); .safetensors -> flattened Flax state; anything else ->
an orbax directory. Writes are atomic and never overwrite without --force. The reading and writing
are `v3d_flax.checkpoints`'.
"""

from __future__ import annotations

import argparse
import sys

from v3d_flax.checkpoints import CheckpointError, check_destination, load_model, save_checkpoint
from v3d_flax.cli import check_source_argument
from v3d_flax.port import PortError
from v3d_flax.registry import list_models
from v3d_flax.weights import named_weights


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m v3d_flax.convert`."""
    from v3d_flax.cli import add_source_argument, model_name

    p = argparse.ArgumentParser(prog="python -m v3d_flax.convert", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=model_name, metavar="NAME",
                   help="registry name: " + ", ".join(list_models()))
    p.add_argument("--from", dest="src", required=True, metavar="NAME_OR_PATH", help="checkpoint to read (torch or Flax), or pretrained weights by name (e.g. kinetics400)")
    p.add_argument("--to", dest="dst", required=True, metavar="PATH",
                   help=".pth/.pt -> PyTorch state_dict; .safetensors -> Flax state; else an orbax directory")
    add_source_argument(p)
    p.add_argument("--num-classes", type=int, default=None, help="head size (default: read from the checkpoint)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --to")
    return p


def main(argv=None) -> int:
    """Run the converter; 0 on success, 1 on a failed conversion, 2 on usage errors."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_source_argument(parser, args)
    from v3d_flax.extras import MissingExtraError
    from v3d_flax.hub import DownloadError

    try:
        check_destination(args.dst, args.force)
        record = named_weights(args.model, args.src)
        if record is not None:  # pretrained weights by name: downloaded, verified and cached first
            from v3d_flax.hub import load_pretrained

            model = load_pretrained(args.model, record, num_classes=args.num_classes)
        else:
            model = load_model(args.model, args.src, source=args.source, num_classes=args.num_classes)
        kind = save_checkpoint(model, args.dst, force=args.force)
    except (CheckpointError, PortError, ValueError, OSError, MissingExtraError, DownloadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.dst} ({kind}, {args.model})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
