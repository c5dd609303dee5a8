"""Nothing lost, nothing executed: kept checkpoints, the run lock, write errors, kill -9 during
training and saving, planted pickles."""
import errno
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import difflab
from difflab.bench.reliability import crash_trials, planted_payloads, train_command
from difflab.training import PRESETS, train
from difflab.training import checkpoint
from difflab.training.checkpoint import CheckpointError
from difflab.training.trainer import run_lock

TOY = PRESETS["toy2d"].replace(batch_size=64, steps=12, ckpt_every=3, log_every=3, sample_every=0,
                                warmup_steps=2)


def weights(model_dir):
    return load_file(model_dir / "model.safetensors")


def test_keep_k_checkpoints(tmp_path):
    train(TOY.replace(keep=3), tmp_path, progress=False, device="cpu")
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert kept == ["step_000006", "step_000009", "step_000012"]
    for name in kept:  # each a complete model directory
        model = difflab.load(tmp_path / "checkpoints" / name, "cpu")
        assert model.step == int(name[5:])
    latest = weights(tmp_path / "checkpoints" / "step_000012")
    assert all(torch.equal(v, weights(tmp_path / "model")[k]) for k, v in latest.items())
    # the archive shares the latest checkpoint's files (hard links): no extra space
    assert os.path.samefile(tmp_path / "model" / "model.safetensors",
                            tmp_path / "checkpoints" / "step_000012" / "model.safetensors")
    # an older archive resumes like any checkpoint: from step 6 to 12, equal to the straight run
    os.makedirs(tmp_path / "again")
    os.rename(tmp_path / "checkpoints" / "step_000006", tmp_path / "again" / "model")
    train(TOY.replace(keep=3), tmp_path / "again", resume=True, progress=False, device="cpu")
    assert all(torch.equal(v, weights(tmp_path / "again" / "model")[k]) for k, v in latest.items())


def test_a_second_run_on_the_same_folder_is_refused(tmp_path):
    with run_lock(tmp_path):
        with pytest.raises(CheckpointError, match=f"in use by another difflab train \\(pid {os.getpid()}\\)"):
            train(TOY, tmp_path, progress=False, device="cpu")
        run = subprocess.run([*train_command(tmp_path)], capture_output=True, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert run.returncode == 2 and "in use by another difflab train" in run.stderr
        assert len(run.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "model").exists()


def test_a_killed_run_does_not_leave_the_folder_locked(tmp_path):
    code = ("import sys, time; from pathlib import Path; from difflab.training.trainer import run_lock\n"
            "with run_lock(Path(sys.argv[1])):\n    print('locked', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    with pytest.raises(CheckpointError, match="in use"):
        with run_lock(tmp_path):
            pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with run_lock(tmp_path):  # the kernel released the dead process's lock
        pass


def test_a_write_error_stops_with_the_last_good_checkpoint(tmp_path, monkeypatch):
    real, calls = checkpoint.save, []

    def disk_full_on_third(tensors, *args, **kwargs):
        calls.append(1)
        if len(calls) > 6:  # model + ema + training state per checkpoint: the third checkpoint fails
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "save", disk_full_on_third)
    with pytest.raises(CheckpointError, match="step 9 .*No space left on device.*previous checkpoint is kept"):
        train(TOY, tmp_path, progress=False, device="cpu")
    assert difflab.load(tmp_path, "cpu").step == 6
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]
    monkeypatch.setattr(checkpoint, "save", real)
    train(TOY, tmp_path, resume=True, progress=False, device="cpu")  # free space, then --resume
    straight = tmp_path / "straight"
    train(TOY, straight, progress=False, device="cpu")
    assert all(torch.equal(v, weights(tmp_path / "model")[k]) for k, v in weights(straight / "model").items())


def test_an_unwritable_run_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(CheckpointError, match="cannot create the run directory"):
        train(TOY, blocker / "run", progress=False, device="cpu")


def test_planted_pickles_are_never_executed(tmp_path):
    model_dir = train(TOY, tmp_path / "run", progress=False, device="cpu")
    planted, executed = planted_payloads(model_dir, tmp_path / "PAYLOAD-RAN")
    assert planted == 6 and executed == 0


def test_kill_9_during_training_and_saving(tmp_path):
    """One run killed twice at random moments (checkpoints every 3 steps, so saving is often hit),
    then resumed: loadable after each kill, bit-identical at the end."""
    report = crash_trials(tmp_path, runs=1, kills_per_run=2, seed=1, steps=60)
    assert report.failures == [] and report.kills == 2
    assert report.loadable == report.with_checkpoint and report.bit_exact == report.runs == 1


@pytest.mark.slow
def test_twenty_kills(tmp_path):
    """Issue 17's crash test: 20 kills in all; 0 unloadable folders, 0 resumed runs that differ."""
    report = crash_trials(tmp_path, runs=5, kills_per_run=4, seed=0, steps=120)
    assert report.kills >= 20 and report.failures == []
    assert report.loadable == report.with_checkpoint and report.bit_exact == report.runs == 5


def test_a_run_that_fails_validation_leaves_no_folder(tmp_path):
    with pytest.raises(ValueError, match="num_classes"):
        train(TOY.replace(num_classes=3), tmp_path / "new", progress=False, device="cpu")  # moons has no labels
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()  # a folder the user made stays
    with pytest.raises(ValueError):
        train(TOY.replace(num_classes=3), tmp_path / "kept", progress=False, device="cpu")
    assert (tmp_path / "kept").is_dir()
