"""Pretrained weights that can be trusted: download, verify, cache, convert and load (`load_pretrained`).

The cache lives under `cache_dir`, else `$V3D_HOME`, else ~/.cache/v3d:

    downloads/<host>/<path of the URL>    the publisher's file, as downloaded (plus <file>.sha256)
    flax/<model>/<weights>-<id>.safetensors   the converted Flax weights: a second load reads only this

A download streams into a temporary file beside its destination and is renamed onto it only once
complete and verified: against the publisher's SHA-256 where one is published (torchvision's
8-digit prefix), and always against the digest recorded at its first download (the .sha256 file
beside it), so a file that changes later is caught. A mismatch deletes the file and says what was
expected and found. A lock file serialises processes of one host, so concurrent loads download once.

`offline=True` (or `V3D_OFFLINE=1`) uses only the cache and, on a miss, says which URL to fetch and
where to put the file; `mirror=` (or `V3D_WEIGHTS_MIRROR`, e.g. "http://mirror.local/v3d" or
"file:///shared/v3d-mirror") replaces the publishers' scheme and host, the URL's path kept. Explicit
arguments win over the environment. Network failures are one `DownloadError` naming the URL.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from v3d_flax.weights import Weights, WeightsFile

if TYPE_CHECKING:  # annotations only
    from flax import nnx

HOME_ENV = "V3D_HOME"
OFFLINE_ENV = "V3D_OFFLINE"
MIRROR_ENV = "V3D_WEIGHTS_MIRROR"
DEFAULT_TIMEOUT = 60.0  # seconds without data before a download fails
_CHUNK = 1 << 20
_TRUE = ("1", "true", "yes", "on")


class DownloadError(RuntimeError):
    """A weights file that could not be fetched (network, HTTP error, offline cache miss)."""


class ChecksumError(DownloadError):
    """A file whose SHA-256 is not the published or the recorded one (the file has been deleted)."""


# ---------------------------------------------------------------------------------------------- settings

def weights_home(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache root: `cache_dir`, else $V3D_HOME, else ~/.cache/v3d."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".cache" / "v3d").expanduser()


def is_offline(offline: bool | None = None) -> bool:
    """`offline` if given, else whether $V3D_OFFLINE is set to 1/true/yes/on."""
    if offline is not None:
        return bool(offline)
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in _TRUE


def mirrored(url: str, mirror: str | None = None) -> str:
    """`url` with its scheme and host replaced by `mirror` (else $V3D_WEIGHTS_MIRROR; unchanged when neither)."""
    mirror = os.environ.get(MIRROR_ENV, "") if mirror is None else mirror
    if not mirror:
        return url
    parts = urlsplit(url)
    return mirror.rstrip("/") + parts.path + (f"?{parts.query}" if parts.query else "")


def cached_path(url: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the file at `url` is kept: downloads/<host>/<path> under the cache root."""
    parts = urlsplit(url)
    segments = [s for s in parts.path.split("/") if s]
    if not parts.netloc or not segments or any(s in (".", "..") for s in segments):
        raise ValueError(f"not a file URL: {url!r}")
    return weights_home(cache_dir).joinpath("downloads", parts.netloc, *segments)


def converted_path(model: str, weights: Weights, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the Flax conversion of `weights` for `model` is kept; the name carries a digest of its
    URLs, so that two records of one name (a record edited by hand) never share a conversion."""
    tag = hashlib.sha256("\n".join(f.url for f in weights.files).encode()).hexdigest()[:8]
    return weights_home(cache_dir) / "flax" / model / f"{weights.name}-{tag}.safetensors"


# ---------------------------------------------------------------------------------------------- files

@contextlib.contextmanager
def file_lock(path: Path):
    """Hold an exclusive lock on `<path>.lock` (fcntl; other processes of this host wait)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no inter-process lock
        yield
        return
    with open(f"{path}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def sha256_of(path: str | os.PathLike) -> str:
    """The SHA-256 hex digest of the file at `path`."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _progress(total: int | None, name: str, progress: bool | None):
    from tqdm import tqdm

    show = sys.stderr.isatty() if progress is None else progress
    return tqdm(total=total, desc=name, unit="B", unit_scale=True, unit_divisor=1024, disable=not show,
                file=sys.stderr)


def _stream(url: str, out, name: str, progress: bool | None, timeout: float) -> str:
    """Write the body at `url` into the open file `out`; its SHA-256. DownloadError, never urllib's own."""
    from v3d_flax import __version__

    request = urllib.request.Request(url, headers={"User-Agent": f"v3d/{__version__}"})
    digest, received, total = hashlib.sha256(), 0, None
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with _progress(total, name, progress) as bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as e:
        raise DownloadError(f"downloading {url} failed: HTTP {e.code} {e.reason}") from None
    except http.client.IncompleteRead as e:
        received += len(e.partial)
        raise DownloadError(f"downloading {url} failed: the connection closed after {received} of "
                            f"{total if total is not None else '?'} bytes (a truncated download; nothing was "
                            f"kept, try again)") from None
    except urllib.error.URLError as e:
        raise DownloadError(f"downloading {url} failed: {e.reason}") from None
    except (TimeoutError, http.client.HTTPException, OSError) as e:
        raise DownloadError(f"downloading {url} failed: {type(e).__name__}: {e or 'timed out'}") from None
    except ValueError as e:  # not a URL urllib can open (a mirror without a scheme)
        raise DownloadError(f"downloading {url} failed: {e}") from None
    if total is not None and received != total:
        raise DownloadError(f"downloading {url} failed: received {received} of {total} bytes (a truncated "
                            f"download; nothing was kept, try again)")
    return digest.hexdigest()


def _check_published(file: WeightsFile, digest: str, where: str) -> None:
    if file.sha256 is not None and not digest.startswith(file.sha256):
        raise ChecksumError(f"{where} (from {file.url}) has SHA-256 {digest}, but the publisher's is "
                            f"{file.sha256}{'...' if len(file.sha256) < 64 else ''}; the file was deleted")


def _check_recorded(path: Path, file: WeightsFile, digest: str) -> None:
    """Compare with the digest recorded at the first download, or record it."""
    sidecar = Path(f"{path}.sha256")
    if sidecar.exists():
        recorded = (sidecar.read_text(encoding="ascii").split() or [""])[0]
        if recorded != digest:
            path.unlink(missing_ok=True)
            raise ChecksumError(f"{path} (from {file.url}) has SHA-256 {digest}, but {recorded} was recorded at its "
                                f"first download ({sidecar}); the file was deleted. If the publisher changed the "
                                f"file, delete {sidecar} to accept the new one")
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{sidecar.name}.", dir=sidecar.parent)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(f"{digest}  {file.url}\n")
    os.replace(tmp, sidecar)


def fetch(file: WeightsFile, *, cache_dir: str | os.PathLike | None = None, offline: bool | None = None,
          mirror: str | None = None, progress: bool | None = None, timeout: float = DEFAULT_TIMEOUT) -> Path:
    """The verified local copy of `file`, downloaded into the cache when missing (see the module docstring).

    DownloadError: offline and not cached (saying what to fetch and where to put it), or the network
    failed; ChecksumError: a published or recorded SHA-256 does not match (the file is deleted).
    """
    dest = cached_path(file.url, cache_dir)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(dest):
        if dest.exists():
            digest = sha256_of(dest)
            try:
                _check_published(file, digest, str(dest))
            except ChecksumError:
                dest.unlink()
                raise
        elif is_offline(offline):
            raise DownloadError(f"offline mode ({OFFLINE_ENV}=1 or offline=True) and {dest} is not in the cache: "
                                f"fetch {file.url} and put it at {dest}")
        else:
            url = mirrored(file.url, mirror)
            fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
            try:
                with os.fdopen(fd, "wb") as out:
                    digest = _stream(url, out, dest.name, progress, timeout)
                _check_published(file, digest, f"the download of {url}")
                umask = os.umask(0)
                os.umask(umask)
                os.chmod(tmp, 0o666 & ~umask)  # not mkstemp's 0600
                os.replace(tmp, dest)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        _check_recorded(dest, file, digest)
    return dest


def fetch_weights(weights: Weights, **options) -> Path:
    """Fetch every file of `weights` (`fetch`'s options); the path the source's reader takes: the file,
    or for a TensorFlow checkpoint its prefix (the .index file's path without ".index")."""
    paths = [fetch(file, **options) for file in weights.files]
    index = next((p for p in paths if p.name.endswith(".index")), None)
    return index.with_name(index.name[:-len(".index")]) if index is not None else paths[0]


# ---------------------------------------------------------------------------------------------- models

def resolve_weights(model: str, weights: Weights | str | os.PathLike) -> Weights | str:
    """The record `weights` names for `model` (a record is completed from the model's), or a local path.
    ValueError naming the model's weights when it is neither a name of them nor an existing file."""
    from v3d_flax.registry import model_spec
    from v3d_flax.weights import named_weights

    if not isinstance(weights, (Weights, str, os.PathLike)):
        raise TypeError(f"weights must be a weights name, a Weights record or a path, not {type(weights).__name__}")
    record = named_weights(model, weights)  # the one rule the commands use too: an existing path wins
    if record is not None:
        return record
    text = os.fspath(weights)
    if os.path.exists(text) or os.path.exists(text + ".index"):  # a file, or a TensorFlow checkpoint prefix
        return text
    names = ", ".join(w.name for w in model_spec(model).weights) or "none"
    raise ValueError(f"model {model!r} has no weights named {text!r} (its weights: {names}) and there is no "
                     f"checkpoint file at {text!r}")


def _load_record(model: str, weights: Weights, kwargs: dict, *, cache_dir, offline, mirror, progress,
                 timeout) -> nnx.Module:
    """`weights` loaded into `model`: from the converted cache when it is there, else from the fetched
    file(s), then converted into the cache."""
    from v3d_flax.checkpoints import CheckpointError, load_model, save_checkpoint
    from v3d_flax.port import PortError

    kwargs = {**weights.model_kwargs, **kwargs}
    converted = converted_path(model, weights, cache_dir)
    converted.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(converted):
        if converted.exists():
            try:
                return load_model(model, converted, num_classes=weights.num_classes, recipe=weights.recipe, **kwargs)
            except (CheckpointError, PortError, OSError):  # an older v3d's layout, a damaged file: convert again
                converted.unlink()
        path = fetch_weights(weights, cache_dir=cache_dir, offline=offline, mirror=mirror, progress=progress,
                             timeout=timeout)
        loaded = load_model(model, path, source=weights.source, num_classes=weights.num_classes, recipe=weights.recipe,
                            **kwargs)
        save_checkpoint(loaded, converted, force=True)
    return loaded


def with_fresh_head(pretrained: nnx.Module, num_classes: int, rngs: nnx.Rngs, **kwargs) -> nnx.Module:
    """A new `pretrained.arch` model of `num_classes` outputs: `pretrained`'s weights everywhere but in the
    classifier its record names (`ModelSpec.classifier`), initialised from `rngs`. PortError (via
    `checkpoints.assign_flax_state`) for any other tensor whose shape differs."""
    from v3d_flax.checkpoints import assign_flax_state, flax_state
    from v3d_flax.registry import create_model, model_spec

    spec = model_spec(pretrained.arch)
    sizes = {k: getattr(pretrained, k) for k in spec.clip_kwargs if hasattr(pretrained, k)}
    model = create_model(pretrained.arch, num_classes=num_classes, rngs=rngs, **{**sizes, **kwargs})
    head = spec.classifier.replace(".", "/") + "/"
    fresh = {k: v for k, v in flax_state(model).items() if k.startswith(head)}
    if not fresh:
        raise ValueError(f"{spec.name}: its record's classifier {spec.classifier!r} names no layer of the model")
    assign_flax_state(model, {**{k: v for k, v in flax_state(pretrained).items() if not k.startswith(head)}, **fresh})
    return model


def resized(pretrained: nnx.Module, **kwargs) -> nnx.Module:
    """`pretrained` rebuilt with the factory arguments `kwargs` (another `num_frames`, `crop_size`, Swin's
    `window_size`), its size-dependent tensors interpolated by its record's `resize_state` and every other
    weight copied; in eval mode. PortError where a tensor cannot be fitted."""
    from v3d_flax.checkpoints import blank_model, infer_num_classes
    from v3d_flax.port import from_torch, torch_shapes, torch_state

    num_classes = infer_num_classes(pretrained.arch, torch_shapes(pretrained), kind="torch")
    model = blank_model(pretrained.arch, num_classes, **kwargs)
    from_torch(model, torch_state(pretrained), resize=True)
    model.eval()
    return model


def load_pretrained(model: str, weights: Weights | str | os.PathLike, *, num_classes: int | None = None,
                    rngs: nnx.Rngs | None = None, source: str | None = None,
                    cache_dir: str | os.PathLike | None = None, offline: bool | None = None,
                    mirror: str | None = None, progress: bool | None = None, timeout: float = DEFAULT_TIMEOUT,
                    **kwargs) -> nnx.Module:
    """Model `model` with pretrained `weights`, in eval mode.

    `weights`: a weights name of the model's record (`v3d_flax.list_weights(model)`), a `Weights`
    record, or a local checkpoint path of `source` (`v3d_flax.port.list_sources()`, default "v3d";
    a TensorFlow checkpoint's prefix). A record's files are fetched and verified (`fetch`) and its
    Flax conversion cached, so a second load reads one safetensors file (no torch import).
    `num_classes` other than the checkpoint's: the backbone is loaded and the classifier
    (`ModelSpec.classifier`) is a fresh one of that size, drawn from `rngs` (default `nnx.Rngs(0)`).
    `kwargs` go to the model's factory. Errors: ValueError (unknown weights), DownloadError /
    ChecksumError (fetching), `checkpoints.CheckpointError` / `port.PortError` (a file that does not fit).
    """
    from flax import nnx

    from v3d_flax.checkpoints import flax_state, infer_num_classes, load_model
    from v3d_flax.registry import model_spec

    found = resolve_weights(model, weights)
    if isinstance(found, Weights):
        if source is not None and source != found.source:
            raise ValueError(f"weights {found.name!r} are read with source {found.source!r}, not {source!r}")
        resizing = bool(kwargs) and model_spec(model).resize_state is not None
        pretrained = _load_record(model, found, {} if resizing else kwargs, cache_dir=cache_dir, offline=offline,
                                  mirror=mirror, progress=progress, timeout=timeout)
        if resizing:  # the record's weights at their own size, then fitted to the model of `kwargs`
            pretrained = resized(pretrained, **kwargs)
        kwargs, loaded_classes = {**found.model_kwargs, **kwargs}, found.num_classes
    else:
        pretrained = load_model(model, found, source=source or "v3d", **kwargs)
        shapes = {k: v.shape for k, v in flax_state(pretrained).items()}
        loaded_classes = infer_num_classes(model, shapes, kind="flax")
    if num_classes is None or num_classes == loaded_classes:
        return pretrained
    fresh = with_fresh_head(pretrained, num_classes, rngs if rngs is not None else nnx.Rngs(0), **kwargs)
    fresh.eval()
    return fresh
