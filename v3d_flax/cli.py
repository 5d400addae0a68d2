"""Helpers shared by the command lines (train.py, predict, features, convert).

Nothing here imports JAX or Flax: the parsers use them, so a usage error (a misspelt model name)
is reported at once, before the heavy imports that only a real run needs.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
import time


def did_you_mean(name: str, choices) -> str | None:
    """The choice closest to a misspelt `name` (case, "-", "_" and "." ignored), or None if none is close."""
    def norm(s: str) -> str:
        return re.sub(r"[-_. ]", "", s.lower())

    by_norm = {norm(c): c for c in choices}
    if norm(name) in by_norm:
        return by_norm[norm(name)]
    close = difflib.get_close_matches(norm(name), list(by_norm), n=1, cutoff=0.6)
    return by_norm[close[0]] if close else None


def unknown_model_message(name: str) -> str:
    """"unknown model 'r3d18'; available models: ...; did you mean r3d_18?" for a name not registered."""
    from v3d_flax.registry import list_models

    names = list_models()
    guess = did_you_mean(name, names)
    hint = f"; did you mean {guess}?" if guess else ""
    return f"unknown model {name!r}; available models: {', '.join(names)}{hint}"


def model_name(text: str) -> str:
    """argparse `type` of --model: a registered model name, else a usage error that suggests the closest."""
    from v3d_flax.registry import list_models

    if text in list_models():
        return text
    raise argparse.ArgumentTypeError(unknown_model_message(text))


def add_source_argument(parser: argparse.ArgumentParser, flag: str = "--source") -> None:
    """`--source`: the checkpoint source of the weights, one of `v3d_flax.port.list_sources()`."""
    from v3d_flax.port.sources import SOURCES

    parser.add_argument(flag, default="v3d", choices=list(SOURCES), metavar="SOURCE",
                        help="checkpoint source of a non-Flax checkpoint (default: v3d): "
                             + "; ".join(f"{name}: {source.checkpoints}" for name, source in SOURCES.items()))


def check_source_argument(parser: argparse.ArgumentParser, args, flag: str = "--source") -> None:
    """A usage error (exit 2) when the source `args` names does not serve `args.model`, naming the ones that do."""
    from v3d_flax.port.sources import check_source

    source = getattr(args, flag.lstrip("-").replace("-", "_"))
    try:
        check_source(source, args.model)
    except ValueError as e:
        parser.error(f"{flag} {source}: {e}")


class Progress:
    """Progress over `total` items, on stderr: a tqdm bar on a terminal, otherwise a plain line at each
    tenth of the work and at least every `interval` seconds (log files get no bar redraws). Silent for
    fewer than two items or when disabled. Use `write` for other output while it runs."""

    def __init__(self, total: int, desc: str, *, unit: str = "video", enabled: bool = True, stream=None,
                 interval: float = 60.0):
        self.stream = stream if stream is not None else sys.stderr
        self.total, self.desc, self.unit, self.interval = total, desc, unit, interval
        self.done = self.failed = 0
        self.active = enabled and total > 1
        self._start = self._last = time.monotonic()
        self._bar = None
        isatty = getattr(self.stream, "isatty", None)
        if self.active and isatty is not None and isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream)

    def update(self, *, failed: bool = False) -> None:
        """One more item finished (`failed`: it could not be used)."""
        self.done += 1
        self.failed += bool(failed)
        if self._bar is not None:
            self._bar.update(1)
            if self.failed:
                self._bar.set_postfix(failed=self.failed)
            return
        if not self.active:
            return
        now = time.monotonic()
        tenth = self.done * 10 // self.total > (self.done - 1) * 10 // self.total
        if tenth or self.done == self.total or now - self._last >= self.interval:
            self._last = now
            print(self.line(now), file=self.stream, flush=True)

    def line(self, now: float | None = None) -> str:
        """"predict: 3/10 videos, 1 failed, 12 s elapsed, ~28 s left"."""
        elapsed = (time.monotonic() if now is None else now) - self._start
        text = f"{self.desc}: {self.done}/{self.total} {self.unit}s"
        if self.failed:
            text += f", {self.failed} failed"
        text += f", {elapsed:.0f} s elapsed"
        if 0 < self.done < self.total:
            text += f", ~{elapsed / self.done * (self.total - self.done):.0f} s left"
        return text

    def write(self, text: str, file=None) -> None:
        """Print a line to `file` (default stderr) without breaking the progress bar."""
        file = file if file is not None else sys.stderr
        if self._bar is not None:
            self._bar.write(text, file=file)
        else:
            print(text, file=file, flush=True)

    def close(self) -> None:
        """Finish the bar (nothing for plain lines)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
