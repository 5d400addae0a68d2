"""Scaling out on CPU devices: sharded jit vs pmap vs two processes, elastic resume, the compiled step.

Multi-device runs are subprocesses (JAX_NUM_CPU_DEVICES) so this pytest process keeps one device.
"""

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from trainrun import REPO, TINY, env, free_port, metrics, start, train, train_losses

STEPS = 4
# Larger clips and a gentler learning rate than TINY's: the layouts sum gradients and BatchNorm
# moments in different orders, and TINY's 4x16x16 clips leave layer4's BatchNorm 8 values per
# channel, so last-bit differences grew to 2.6e-3 relative by step 4 (ill-conditioned, not wrong).
# At 8x32x32 and lr 0.01 the 2-process losses stay within 2e-5 of the 1-process ones (measured on
# the default dataset; on the tiny one TINY now reads they pass the 1e-4 bound, while 24-pixel crops
# of it did not: pmap was 1.6e-4 off at step 4).
def _with(args: list[str], flag: str, value) -> list[str]:
    """`args` with the value after `flag` replaced."""
    i = args.index(flag)
    return [*args[:i + 1], str(value), *args[i + 2:]]


ARGS = [*_with(_with(_with(TINY, "--lr", 0.01), "--num-frames", 8), "--crop-size", 32),
        "--steps", str(STEPS), "--checkpoint-every", "2"]


def _assert_close(losses, reference, rtol=1e-4):
    assert sorted(losses) == sorted(reference)
    steps = sorted(reference)
    np.testing.assert_allclose([losses[s] for s in steps], [reference[s] for s in steps], rtol=rtol,
                               err_msg=f"losses at steps {steps}")


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory):
    """The default path on 1 process x 4 devices."""
    workdir = tmp_path_factory.mktemp("sharded")
    result = train([*ARGS, "--workdir", str(workdir)], devices=4)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "4 device(s) x 1 process(es)" in result.stdout
    return workdir


def test_pmap_matches_sharded_jit(sharded_run, tmp_path):
    result = train([*ARGS, "--workdir", str(tmp_path), "--parallel", "pmap"], devices=4)
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_close(train_losses(tmp_path), train_losses(sharded_run))
    evals = [[r["top1"] for r in metrics(w) if r["split"] == "eval"] for w in (tmp_path, sharded_run)]
    assert evals[0] == evals[1]


def test_two_processes_of_two_devices_match_one_process_of_four(sharded_run, tmp_path):
    port = free_port()
    procs = [start([*ARGS, "--workdir", str(tmp_path), "--coordinator-address", f"127.0.0.1:{port}",
                    "--num-processes", "2", "--process-id", str(i)], devices=2, compilation_cache=False)
             for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert "4 device(s) x 2 process(es)" in outs[0][0]
    assert "device(s)" not in outs[1][0]  # only the first process prints
    _assert_close(train_losses(tmp_path), train_losses(sharded_run))


def test_run_saved_on_four_devices_resumes_on_two(sharded_run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(sharded_run, workdir)
    shutil.rmtree(workdir / "checkpoints" / str(STEPS))  # as if stopped right after step 2's checkpoint
    result = train([*ARGS, "--workdir", str(workdir)], devices=2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from the checkpoint at step 2" in result.stdout
    assert "2 device(s) x 1 process(es)" in result.stdout
    _assert_close(train_losses(workdir), train_losses(sharded_run))


def test_batch_that_does_not_divide_over_devices_is_refused(tmp_path):
    args = _with(ARGS, "--batch-size", 6)  # 6 clips on 4 devices
    result = train([*args, "--workdir", str(tmp_path / "w")], devices=4)
    assert result.returncode == 1
    assert "--batch-size / --grad-accum 6 does not divide over 4 devices" in result.stderr
    assert "Traceback" not in result.stderr


COLLECTIVES = textwrap.dedent("""
    import json, re
    import jax, numpy as np
    from flax import nnx
    from v3d_flax.train.config import TrainConfig, resolve
    from v3d_flax.train import mesh as M, parallel as P, state as S, steps as St
    config = resolve(TrainConfig(model="r3d_18", workdir="-", num_frames=4, crop_size=16, batch_size=8))
    model = S.build_model("r3d_18", num_classes=5, num_frames=4, crop_size=16, seed=0)
    defs, mstate = S.split_model(model)
    tx, schedule = S.build_optimizer(config, 10)
    layout = P.data_parallel("jit", jax.devices())
    mesh = layout.mesh
    state = jax.device_put(S.init_state(mstate, tx), M.replicated(mesh))
    step = layout.compile(St.make_train_step(defs, tx, schedule, num_classes=5, label_smoothing=0.1,
                                             precision="fp32"))
    batch = M.to_global({"video": np.zeros((8, 4, 16, 16, 3), np.float32), "label": np.zeros(8, np.int32)}, mesh)
    hlo = step.lower(state, batch).compile().as_text()
    ops = []
    for line in hlo.splitlines():
        m = re.search(r"= (.*?) (all-reduce|all-gather|all-to-all|collective-permute|reduce-scatter)(?:-start)?\\(", line)
        if m:
            sizes = [int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
                     for dims in re.findall(r"\\w+\\[([\\d,]*)\\]", m.group(1))]
            ops.append({"op": m.group(2), "elements": sum(sizes)})
    bn = [m for _, m in nnx.iter_modules(model) if type(m).__name__ == "BatchNorm"]
    print(json.dumps({"ops": ops, "params": sum(x.size for x in jax.tree.leaves(mstate["params"])),
                      "bn_channels": sum(m.num_features for m in bn), "bn_layers": len(bn)}))
""")


def test_compiled_step_reduces_gradients_and_bn_statistics_only():
    result = subprocess.run([sys.executable, "-c", COLLECTIVES], env=env(4), cwd=REPO, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads(result.stdout.strip().splitlines()[-1])
    kinds = {op["op"] for op in info["ops"]}
    assert kinds == {"all-reduce"}, f"unexpected collectives (an activation/batch gather?): {kinds}"
    reduced = sum(op["elements"] for op in info["ops"])
    # Every gradient is reduced once; each BatchNorm's mean and variance once in the forward pass and
    # a per-channel pair again in its backward pass; plus a handful of scalars (loss, accuracy).
    assert reduced >= info["params"] + 2 * info["bn_channels"]
    assert reduced <= info["params"] + 4 * info["bn_channels"] + 64
