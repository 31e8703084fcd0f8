"""Devices and multi-process training: `--device`, DDP on the CPU (Gloo), torchrun and crashes.

The DDP checks run two processes (torch.multiprocessing.spawn, Gloo, one thread each) on a
tiny model and compare with one process doing the same work: the same global batches give
the same weights up to floating-point noise, evaluation and TRR are summed over the ranks,
and freeze-&-grow keeps the frozen block bit-exact.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nestdnn import distributed
from nestdnn.cli import main
from nestdnn.data import SyntheticConfig, load_dataset
from nestdnn.device import resolve_amp, resolve_device
from nestdnn.errors import NestError
from nestdnn.models import NestNet, build_model
from nestdnn.training import TrainConfig, evaluate, train
from pruning.importance import TRR
from recovery.freeze import Freezer, block_index

SYNTHETIC = SyntheticConfig(num_classes=4, in_channels=1, input_size=16, train_size=320,
                            test_size=40)  # fmt: skip
CONFIG = TrainConfig(epochs=2, batch_size=32, lr=0.02, augment=True, seed=3, threads=1,
                     progress=False, device="cpu")  # fmt: skip
NESTDNN = [sys.executable, "-m", "nestdnn"]


def tiny(seed: int) -> NestNet:
    torch.manual_seed(seed)
    return build_model("vgg11", in_channels=1, num_classes=4, input_size=16, width_mult=0.0625)


def frozen_widths(model: NestNet) -> dict[str, int]:
    return {g: max(1, w // 2) for g, w in model.groups().items()}


def scenarios() -> dict[str, Any]:
    """What every check compares: run alone, or by each rank of a process group."""
    torch.set_num_threads(1)
    splits = load_dataset("synthetic", synthetic=SYNTHETIC, seed=0)
    model = tiny(0)
    result = train(model, splits, CONFIG)
    grown = tiny(1)
    before = {k: v.clone() for k, v in grown.state_dict().items()}
    freezer = Freezer(grown, frozen_widths(grown))
    train(grown, splits, CONFIG, before_step=freezer.mask_grads, after_step=freezer.restore)
    return {
        "trained": model.state_dict(),
        "history": [(e.loss, e.train_accuracy, e.val_accuracy) for e in result.history],
        "val_accuracy": evaluate(model, splits.val, batch_size=7),
        "trr": TRR(triplets=48, batch_size=8).scores(tiny(2).eval(), splits.train),
        "grown_before": before,
        "grown_after": grown.state_dict(),
    }


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        torch.save(scenarios(), Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One process, and both ranks of two processes, through the same scenarios."""
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_ddp_worker, args=(2, free_port(), str(out)), nprocs=2, join=True)
    threads = torch.get_num_threads()
    try:
        alone = scenarios()
    finally:
        torch.set_num_threads(threads)
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]
    return {"alone": alone, "ranks": ranks}


# --- DDP with Gloo on the CPU ----------------------------------------------------------------


def test_two_processes_train_the_weights_of_one_with_the_same_global_batch(
    runs: dict[str, Any],
) -> None:
    alone, (rank0, rank1) = runs["alone"], runs["ranks"]
    for key, tensor in alone["trained"].items():
        assert torch.equal(rank0["trained"][key], rank1["trained"][key]), key  # in lockstep
        # weights, and batch-norm statistics taken over the global batch
        torch.testing.assert_close(rank0["trained"][key], tensor, rtol=1e-4, atol=1e-5)
    for mine, theirs in zip(rank0["history"], alone["history"], strict=True):
        assert mine == pytest.approx(theirs, rel=1e-4)


def test_evaluation_and_trr_are_summed_over_the_ranks(runs: dict[str, Any]) -> None:
    alone, ranks = runs["alone"], runs["ranks"]
    for rank in ranks:
        assert rank["val_accuracy"] == pytest.approx(alone["val_accuracy"], abs=1e-9)
        for group, scores in alone["trr"].items():
            torch.testing.assert_close(rank["trr"][group], scores, rtol=1e-9, atol=1e-9)


def test_recovery_under_ddp_keeps_the_frozen_block_bit_exact(runs: dict[str, Any]) -> None:
    model = tiny(1)
    axes, widths = model.param_axes(), frozen_widths(model)
    alone, ranks = runs["alone"], runs["ranks"]
    for rank in ranks:
        for key, before in rank["grown_before"].items():
            after = rank["grown_after"][key]
            if before.dim() < 2:
                continue
            index = block_index(axes[key], widths)
            assert torch.equal(after[index], before[index]), key
            assert not torch.equal(after, before), f"{key} did not train"
            torch.testing.assert_close(after, alone["grown_after"][key], rtol=1e-4, atol=1e-5)


# --- devices ---------------------------------------------------------------------------------


@pytest.mark.skipif(
    torch.cuda.is_available() or torch.backends.mps.is_available(), reason="has a GPU"
)
def test_auto_picks_the_cpu_on_this_machine(caplog: pytest.LogCaptureFixture) -> None:
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_amp(None, torch.device("cpu")) == "off"
    with pytest.raises(NestError, match="--device cuda: CUDA is not available"):
        resolve_device("cuda:1")
    with pytest.raises(NestError, match="unknown device"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="has CUDA")
def test_device_cuda_without_cuda_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for stage in (
        ["train", "--arch", "vgg11", "--dataset", "synthetic", "--out", str(tmp_path)],
        ["prune", "--model", "m.pt", "--dataset", "synthetic", "--min-accuracy", "0.5",
         "--out", str(tmp_path)],
        ["recover", "--prune-dir", str(tmp_path), "--out", str(tmp_path / "m.nest")],
    ):  # fmt: skip
        assert main([*stage, "--device", "cuda"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "CUDA is not available" in err, err
    assert list(tmp_path.iterdir()) == []


def test_the_first_log_line_names_the_device(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    args = ["train", "--arch", "vgg11", "--width-mult", "0.0625", "--dataset", "synthetic",
            "--synthetic-samples", "64", "--input-size", "16", "--epochs", "0.1",
            "--threads", "1", "--out", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    first = caplog.records[0].getMessage()
    on_cpu = resolve_device() == torch.device("cpu")
    assert first.startswith("device: cpu (auto: no CUDA or MPS)" if on_cpu else "device: "), first


# --- torchrun --------------------------------------------------------------------------------

TRAIN = ["train", "--arch", "vgg11", "--width-mult", "0.0625", "--dataset", "synthetic",
         "--synthetic-samples", "1200", "--input-size", "16", "--batch-size", "32",
         "--no-augment", "--threads", "1"]  # fmt: skip


def worker_pids(mark: str) -> dict[int, int]:
    """Rank -> pid of the torchrun workers started with NESTDNN_TEST_MARK=mark."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        env = dict(item.decode(errors="replace").partition("=")[::2] for item in environ if item)
        if env.get("NESTDNN_TEST_MARK") == mark and "TORCHELASTIC_RUN_ID" in env:
            found[int(env["RANK"])] = int(entry.name)
    return found


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_a_rank_crash_ends_the_others_and_leaves_a_resumable_checkpoint(tmp_path: Path) -> None:
    mark = uuid.uuid4().hex
    env = {**os.environ, "NESTDNN_TEST_MARK": mark}
    command = [*NESTDNN, *TRAIN, "--epochs", "40", "--nproc", "2", "--out", str(tmp_path)]
    launcher = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)  # fmt: skip
    state = tmp_path / "train_state.pt"
    deadline = time.monotonic() + 120
    try:
        while not state.exists():
            assert launcher.poll() is None, launcher.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no epoch finished in 2 minutes"
            time.sleep(0.05)
        pids = worker_pids(mark)
        assert sorted(pids) == [0, 1]
        os.kill(pids[1], signal.SIGKILL)
        _, err = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode != 0
    assert worker_pids(mark) == {}, "a rank outlived the crash"
    assert "process 0 of 2 lost contact with the others" in err  # one line, no traceback
    assert "[rank0]" not in err
    assert err.count("epoch 1/40:") == 1, err[-3000:]  # only rank 0 logs
    # One process (or two) picks up where the crashed run stopped.
    resumed = subprocess.run([*NESTDNN, *TRAIN, "--epochs", "40", "--out", str(tmp_path)],
                             capture_output=True, text=True, timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming after epoch" in resumed.stderr
    assert (tmp_path / "vanilla.pt").exists()


def test_nproc_trains_with_two_processes_and_rank_0_writes(tmp_path: Path) -> None:
    run = subprocess.run(
        [*NESTDNN, *TRAIN, "--epochs", "1", "--nproc", "2", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("test accuracy") == 1
    assert "process group: 2 processes (gloo)" in run.stderr
    assert "2 processes x 1 threads" in run.stderr
    report = json.loads((tmp_path / "train.json").read_text())
    assert report["processes"] == 2 and report["device"] == "cpu"


def test_prune_and_recover_run_under_torchrun(tmp_path: Path) -> None:
    train = subprocess.run([*NESTDNN, *TRAIN, "--epochs", "2", "--out", str(tmp_path)],
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert train.returncode == 0, train.stderr[-3000:]
    prune = [*NESTDNN, "prune", "--model", str(tmp_path / "vanilla.pt"), "--dataset",
             "synthetic", "--min-accuracy", "0", "--ratio", "0.25", "--min-retrain-steps", "4",
             "--retrain-epochs", "0.1", "--batch-size", "32", "--triplets", "16",
             "--max-steps", "2", "--threads", "1", "--nproc", "2", "--out",
             str(tmp_path / "prune")]  # fmt: skip
    run = subprocess.run(prune, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("seed: step 2") == 1  # rank 0 prints
    recover = [*NESTDNN, "recover", "--prune-dir", str(tmp_path / "prune"), "--descendants",
               "3", "--epochs-per-level", "0.2", "--batch-size", "32", "--threads", "1",
               "--nproc", "2", "--out", str(tmp_path / "model.nest")]  # fmt: skip
    run = subprocess.run(recover, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "accuracies match" in run.stderr  # every descendant re-measured from the file
    assert run.stdout.count("wrote ") == 1 and not (tmp_path / "model.nest.work").exists()


def test_batch_size_must_split_evenly_between_processes() -> None:
    from nestdnn.training import plan_batches

    with pytest.raises(NestError, match="multiple of the number of processes"):
        plan_batches(100, TrainConfig(batch_size=30), processes=4)
    plan = plan_batches(100, TrainConfig(batch_size=32, epochs=1, min_steps=10), processes=4)
    assert (plan.local_batch_size, plan.steps_per_epoch, plan.total_steps) == (8, 3, 10)


def test_without_nproc_removes_the_option() -> None:
    assert distributed.without_nproc(["train", "--nproc", "2", "--epochs", "1"]) == [
        "train", "--epochs", "1",
    ]  # fmt: skip
    assert distributed.without_nproc(["prune", "--nproc=4", "--out", "x"]) == [
        "prune", "--out", "x",
    ]  # fmt: skip
