"""Pretrained weights: the records say what the publishers say, and downloads can be trusted (a local
HTTP server on 127.0.0.1 stands in for the publishers)."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

import v3d_flax
from v3d_flax import hub
from v3d_flax.port.sources import get_source, list_sources
from v3d_flax.registry import create_model, model_spec
from v3d_flax.weights import Weights, WeightsFile, get_weights, list_weights, main, weights_table
from weights_server import WeightsServer

PAYLOAD = os.urandom(3 * 1024 * 1024 + 17)
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()
# records whose publisher serves the file over plain http only
PLAIN_HTTP = {("c3d", "sports1m")}
NAME = re.compile(r"(kinetics400|kinetics600|ssv2|charades|sports1m)(_4x16)?(_scratch)?(_flow)?(_tf)?")


@pytest.fixture()
def server():
    s = WeightsServer()
    s.files["/models/weights.bin"] = PAYLOAD
    yield s
    s.stop()


@pytest.fixture(autouse=True)
def _no_weights_environment(monkeypatch):
    for name in (hub.HOME_ENV, hub.OFFLINE_ENV, hub.MIRROR_ENV):
        monkeypatch.delenv(name, raising=False)


def _no_chained_traceback(error: BaseException) -> bool:
    """Whether `error` prints alone (no "During handling of the above exception" from urllib)."""
    return error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if p.name.endswith((".part", ".tmp")))


# ---------------------------------------------------------------------------------------------- records

@pytest.mark.parametrize("model,weights", [(m, w) for m, w in list_weights()], ids=lambda x: getattr(x, "name", x))
def test_every_record_is_complete(model, weights):
    spec = model_spec(model)
    assert NAME.fullmatch(weights.name), weights.name
    for file in weights.files:
        scheme = "http" if (model, weights.name) in PLAIN_HTTP else "https"
        assert file.url.startswith(f"{scheme}://") and hub.cached_path(file.url, "/c").name == file.filename
    assert weights.source in list_sources() and get_source(weights.source).serves(model)
    assert weights.num_classes > 0 and weights.recipe is not None and weights.repository.startswith("https://")
    assert weights.license and weights.file_format and weights.dataset
    if weights.modality == "rgb":
        assert weights.normalization is not None
    else:
        assert weights.normalization is None and weights.model_kwargs["in_channels"] == 2
    if weights.classes is not None:
        text = resources.files("v3d_flax.classnames").joinpath(f"{weights.classes}.txt").read_text(encoding="utf-8")
        assert len([line for line in text.splitlines() if line.strip()]) == weights.num_classes
    else:
        assert "class names" in weights.notes
    if weights.source == "deepmind-tf":
        assert [f.filename for f in weights.files] == ["model.ckpt.index", "model.ckpt.data-00000-of-00001"]
    if weights.source == "torchvision":  # the file name's hex is the start of its SHA-256
        assert weights.files[0].sha256 == re.search(r"-([0-9a-f]{8})\.pth$", weights.files[0].url).group(1)
    elif all(f.sha256 is None for f in weights.files):
        assert "checksum" in weights.notes
    for m in weights.metrics:
        assert m.source and any(v is not None for v in (m.top1, m.top5, m.mean_ap))
    assert spec.get_weights(weights.name) is weights


def test_records_match_the_publishers_figures():
    r2 = get_weights("r2plus1d_18", "kinetics400")
    assert r2.files[0].url == "https://download.pytorch.org/models/r2plus1d_18-91a641e6.pth"
    assert (r2.top1, r2.metrics[0].top5, r2.size_mb) == (67.463, 86.175, 120.3)
    sf = get_weights("slowfast_r50", "kinetics400_4x16")
    assert sf.files[0].url == "https://dl.fbaipublicfiles.com/pytorchvideo/model_zoo/kinetics/SLOWFAST_4x16_R50.pyth"
    assert (sf.recipe.alpha, dict(sf.model_kwargs), sf.top1) == (8, {"alpha": 8, "fusion_kernel": 5}, 75.34)
    slow = get_weights("slow_r50", "kinetics400_4x16")
    assert (slow.recipe.frames, slow.recipe.rate) == (4, 16) and model_spec("slow_r50").recipe.frames == 8
    assert get_weights("slow_r50", "charades").metrics[0].mean_ap == 34.72
    assert get_weights("i3d", "kinetics400_tf").files[0].url == (
        "https://raw.githubusercontent.com/deepmind/kinetics-i3d/master/data/checkpoints/rgb_imagenet/model.ckpt.index")
    assert get_weights("i3d", "kinetics600_tf").num_classes == 600
    assert get_weights("c3d", "sports1m").num_classes == 487


def test_unknown_weights_name_the_models_weights():
    with pytest.raises(ValueError, match="no weights named 'kinetics'.*kinetics400"):
        model_spec("r3d_18").get_weights("kinetics")
    with pytest.raises(ValueError, match="has no weights named 'nope'.*no checkpoint file"):
        hub.resolve_weights("r3d_18", "nope")
    assert [w.name for w in model_spec("r3d_34").weights] == []


def test_bad_records_are_refused_when_registered():
    with pytest.raises(ValueError, match="lowercase"):
        Weights(name="Kinetics", files=(WeightsFile("https://h/x.pth"),), source="torchvision", file_format="f",
                dataset="d", num_classes=1, classes=None, repository="r", license="l")
    with pytest.raises(ValueError, match="hex"):
        WeightsFile("https://h/x.pth", sha256="xyz")
    record = get_weights("x3d_xs", "kinetics400")
    with pytest.raises(ValueError, match="source 'pytorchvideo' is not among"):
        record.for_model(model_spec("r3d_18"))


def test_the_table_lists_every_weights(capsys):
    table = weights_table()
    assert len(table.splitlines()) == 1 + len(list_weights())
    assert re.search(r"\nr2plus1d_18 +kinetics400 +Kinetics-400 +67.463 +120.3 +torchvision\n", table)
    assert v3d_flax.list_weights("x3d_m") == [("x3d_m", get_weights("x3d_m", "kinetics400"))]
    assert main(["slowfast_r50"]) == 0
    out = capsys.readouterr().out
    assert "kinetics400_4x16" in out and "mAP 37.24" in out and "r3d_18" not in out
    assert main(["nope"]) == 2


def test_create_model_without_weights_still_needs_classes_and_rngs():
    with pytest.raises(TypeError, match="needs num_classes= and rngs="):
        create_model("r3d_18", num_classes=3)
    with pytest.raises(TypeError, match="source="):
        create_model("r3d_18", num_classes=3, rngs=object(), source="torchvision")


def test_reading_the_records_and_the_hub_imports_no_jax():
    code = ("import sys, v3d_flax, v3d_flax.hub; v3d_flax.list_weights(); "
            "assert not [m for m in ('jax', 'numpy', 'torch') if m in sys.modules]")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------------- downloads

def test_download_verifies_caches_and_hits_without_network(server, tmp_path):
    file = WeightsFile(server.url("/models/weights.bin"), sha256=DIGEST)
    path = hub.fetch(file, cache_dir=tmp_path)
    assert path == tmp_path / "downloads" / f"127.0.0.1:{server.httpd.server_address[1]}" / "models" / "weights.bin"
    assert path.read_bytes() == PAYLOAD and Path(f"{path}.sha256").read_text().split()[0] == DIGEST
    server.stop()
    assert hub.fetch(file, cache_dir=tmp_path, offline=True) == path and server.hits["/models/weights.bin"] == 1
    assert hub.fetch(WeightsFile(file.url, sha256=DIGEST[:8]), cache_dir=tmp_path) == path  # a published prefix
    assert _leftovers(tmp_path) == []


def test_checksum_mismatch_deletes_and_names_both_digests(server, tmp_path):
    wrong = "0" * 64
    with pytest.raises(hub.ChecksumError, match=f"SHA-256 {DIGEST}, but the publisher's is {wrong}"):
        hub.fetch(WeightsFile(server.url("/models/weights.bin"), sha256=wrong), cache_dir=tmp_path)
    assert not any(p.is_file() and p.suffix == ".bin" for p in tmp_path.rglob("*")) and _leftovers(tmp_path) == []


def test_the_first_download_is_recorded_and_later_loads_checked(server, tmp_path):
    file = WeightsFile(server.url("/models/weights.bin"))  # no published checksum
    path = hub.fetch(file, cache_dir=tmp_path)
    path.write_bytes(PAYLOAD[:-1] + b"x")
    with pytest.raises(hub.ChecksumError, match=f"but {DIGEST} was recorded at its first download"):
        hub.fetch(file, cache_dir=tmp_path)
    assert not path.exists()
    assert hub.fetch(file, cache_dir=tmp_path).read_bytes() == PAYLOAD  # downloaded again, checked again
    assert server.hits["/models/weights.bin"] == 2


def test_truncated_download_keeps_nothing(server, tmp_path):
    server.truncate.add("/models/weights.bin")
    url = server.url("/models/weights.bin")
    with pytest.raises(hub.DownloadError, match=rf"downloading {re.escape(url)} failed: .*truncated") as info:
        hub.fetch(WeightsFile(url), cache_dir=tmp_path)
    assert _no_chained_traceback(info.value)
    assert not hub.cached_path(url, tmp_path).exists() and _leftovers(tmp_path) == []


def test_server_down_http_errors_and_timeouts_name_the_url(server, tmp_path):
    missing = server.url("/models/missing.bin")
    with pytest.raises(hub.DownloadError, match=rf"downloading {re.escape(missing)} failed: HTTP 404"):
        hub.fetch(WeightsFile(missing), cache_dir=tmp_path)
    server.delay = 1.0
    slow = server.url("/models/weights.bin")
    with pytest.raises(hub.DownloadError, match=rf"downloading {re.escape(slow)} failed: .*timed out"):
        hub.fetch(WeightsFile(slow), cache_dir=tmp_path, timeout=0.2)
    server.stop()
    with pytest.raises(hub.DownloadError, match=rf"downloading {re.escape(slow)} failed: .*[Cc]onnection refused") \
            as info:
        hub.fetch(WeightsFile(slow), cache_dir=tmp_path)
    assert _no_chained_traceback(info.value)
    assert _leftovers(tmp_path) == []


def test_offline_says_what_to_fetch_and_where(server, tmp_path, monkeypatch):
    file = WeightsFile("https://download.example.org/models/weights.bin", sha256=DIGEST)
    dest = tmp_path / "downloads" / "download.example.org" / "models" / "weights.bin"
    monkeypatch.setenv(hub.OFFLINE_ENV, "1")
    monkeypatch.setenv(hub.HOME_ENV, str(tmp_path))
    with pytest.raises(hub.DownloadError, match=rf"fetch {re.escape(file.url)} and put it at {re.escape(str(dest))}"):
        hub.fetch(file)
    dest.write_bytes(PAYLOAD)  # placed by hand, as the message says
    assert hub.fetch(file) == dest
    dest.write_bytes(b"not it")
    with pytest.raises(hub.ChecksumError):
        hub.fetch(file)
    assert server.hits == {}


def test_mirror_replaces_the_publishers_host(server, tmp_path, monkeypatch):
    file = WeightsFile("https://download.example.org/models/weights.bin", sha256=DIGEST)
    assert hub.mirrored(file.url, "http://m.local/v3d/") == "http://m.local/v3d/models/weights.bin"
    monkeypatch.setenv(hub.MIRROR_ENV, server.root)
    path = hub.fetch(file, cache_dir=tmp_path)
    assert path == tmp_path / "downloads" / "download.example.org" / "models" / "weights.bin"
    assert server.hits["/models/weights.bin"] == 1
    assert hub.mirrored(file.url, "") == file.url  # an explicit empty mirror wins over the environment


def test_two_processes_download_once(server, tmp_path):
    server.delay = 0.5  # both are in flight at once
    code = ("import sys; from v3d_flax.hub import fetch; from v3d_flax.weights import WeightsFile; "
            "print(fetch(WeightsFile(sys.argv[1], sha256=sys.argv[2]), cache_dir=sys.argv[3]))")
    args = [sys.executable, "-c", code, server.url("/models/weights.bin"), DIGEST, str(tmp_path)]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0] and outs[0] == outs[1]
    assert server.hits["/models/weights.bin"] == 1 and Path(outs[0]).read_bytes() == PAYLOAD
