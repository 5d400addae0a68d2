"""The PNG of loss and accuracy curves written at the end of a run."""

from __future__ import annotations

import os


def plot_curves(records: list[dict], path: str, title: str = "") -> str:
    """Loss (left) and top-1 accuracy (right) against step, train and eval; returns `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for split, style in (("train", "-"), ("eval", "o-")):
        rows = [r for r in records if r["split"] == split and isinstance(r.get("loss"), (int, float))]
        if not rows:
            continue
        steps = [r["step"] for r in rows]
        ax_loss.plot(steps, [r["loss"] for r in rows], style, label=split)
        ax_acc.plot(steps, [r["top1"] for r in rows], style, label=f"{split} top-1")
    ax_loss.set(xlabel="step", ylabel="loss", title="loss")
    ax_acc.set(xlabel="step", ylabel="top-1", title="accuracy", ylim=(0, 1.02))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
