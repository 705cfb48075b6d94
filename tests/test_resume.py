"""Resume (issue #15): a resume keeps the run it resumes, ends where an uninterrupted run ends (to the last digit),
and SIGINT / SIGTERM stop a run with a non-zero exit and a one-line resume hint."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, without_log_lines
from test_cli import only_run_dir, run_cli

from zoo.run import main

EPOCHS = 6


@pytest.fixture(scope="module")
def seqfile(tmp_path_factory) -> Path:
    """A small sequence file (users walk the item cycle with a user-specific stride, 20% random items): SASRec
    trains on it in a fraction of a second per epoch."""
    rng = np.random.default_rng(0)
    lines = []
    for user in range(1500):
        start, n = int(rng.integers(60)), int(rng.integers(10, 30))
        items = [(start + t * (1 + user % 3)) % 60 + 1 for t in range(n)]
        items = [int(rng.integers(1, 61)) if rng.random() < 0.2 else i for i in items]
        lines.append(" ".join(map(str, [user + 1, *items])))
    path = tmp_path_factory.mktemp("resume-data") / "seq.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def tiny(seqfile: Path, run_root: Path, epochs: int = EPOCHS) -> list[str]:
    return [
        "recipe=sasrec_ml100k",
        "data.name=seqfile",
        f"data.path={seqfile}",
        "data.max_len=20",
        "data.train_len=0",
        "data.batch_size=32",
        "model.hidden_size=16",
        "model.num_layers=1",
        f"trainer.max_epochs={epochs}",
        "trainer.early_stopping_patience=0",
        "logger.name=csv",
        "trainer.enable_progress_bar=false",
        f"run_root={run_root}",
    ]


def cli(args, capsys):
    return run_cli(args, capsys)


def metrics_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def _test_keys(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k.startswith("test/")}


def snapshot(run_dir: Path) -> dict:
    return {p.relative_to(run_dir): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(seqfile, tmp_path_factory):
    """One uninterrupted tiny run (single thread): its run directory."""
    root = tmp_path_factory.mktemp("finished")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(tiny(seqfile, root)) == 0
    finally:
        torch.set_num_threads(threads)
    return only_run_dir(root)


def launch(args) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, "-m", "zoo.run", *args], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def wait_for_checkpoint(proc: subprocess.Popen, root: Path, timeout: float = 60) -> Path:
    """Poll until the subprocess's first last.ckpt (end of epoch 0) is there and whole; its run directory."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "the run ended before its first checkpoint was seen"
        found = list(root.glob("*/*/checkpoints/last.ckpt"))
        if found:
            return found[0].parent.parent
        time.sleep(0.02)
    raise AssertionError("no last.ckpt in time")


# -- 2. a killed and resumed run ends where an uninterrupted one ends -----------------------------------------
def test_sigkill_then_resume_matches_uninterrupted_run_exactly(seqfile, finished, tmp_path, capsys, one_thread):
    root = tmp_path / "runs"
    proc = launch(tiny(seqfile, root))
    run_dir = wait_for_checkpoint(proc, root)
    proc.kill()
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / "metrics.json").exists()
    killed_at = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"]
    assert killed_at < EPOCHS - 1
    config = (run_dir / "config.yaml").read_bytes()
    code, _, err = cli([f"resume={run_dir}"], capsys)  # the README's form: no recipe, no overrides
    assert code == 0, err
    assert (run_dir / "config.yaml").read_bytes() == config
    resumed, uninterrupted = _test_keys(metrics_of(run_dir)), _test_keys(metrics_of(finished))
    assert resumed and resumed == uninterrupted  # exactly, every digit
    # the metrics history is kept: one validation row per epoch, the killed epoch's rows not repeated
    rows = (run_dir / "logs" / "csv" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    val_epochs = [r.split(",")[header.index("epoch")] for r in rows[1:] if r.split(",")[header.index("val/ndcg@10")]]
    assert val_epochs == [str(e) for e in range(EPOCHS)]


def test_last_checkpoint_is_written_every_epoch(finished):
    last = torch.load(finished / "checkpoints" / "last.ckpt", weights_only=True)
    best = torch.load(finished / "checkpoints" / "best.ckpt", weights_only=True)
    assert last["epoch"] == EPOCHS - 1
    assert last["global_step"] >= best["global_step"]
    assert any("RNGState" in key for key in last["callbacks"])


def test_sampler_epoch_comes_from_the_trainer():
    from zoo.data.datamodule import BatchIndexSampler

    plain = BatchIndexSampler(50, 8, shuffle=True, seed=1)
    orders = [sum(plain, []) for _ in range(3)]  # outside a trainer: each iteration is the next epoch
    resumed = BatchIndexSampler(50, 8, shuffle=True, seed=1)
    resumed.set_epoch(2)
    assert sum(resumed, []) == orders[2] != orders[1]
    assert sum(resumed, []) == orders[2]  # set_epoch fixes the epoch: iterating again does not advance it


# -- 3. SIGTERM / SIGINT --------------------------------------------------------------------------------------
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_with_exit_status_and_resume_hint(seqfile, tmp_path, signum):
    root = tmp_path / "runs"
    proc = launch(tiny(seqfile, root, epochs=50))
    run_dir = wait_for_checkpoint(proc, root)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, err.decode()[-2000:]
    last = err.decode().strip().splitlines()[-1]
    assert last == (
        f"error: run stopped by {signal.Signals(signum).name} ({run_dir}); "
        f"resume it with: python -m zoo.run resume={run_dir}"
    )
    assert not (run_dir / "metrics.json").exists()
    torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)  # whole


# -- 1. a resume never destroys the run it resumes ---------------------------------------------------------------
def test_resuming_a_finished_run_does_nothing(finished, capsys):
    before = snapshot(finished)
    code, out, err = cli([f"resume={finished}"], capsys)
    assert code == 0, err
    assert out.count("\n") == 1 and "is finished" in out
    assert snapshot(finished) == before


@pytest.mark.parametrize(
    "args",
    [
        ["recipe=pop_ml100k"],
        ["model.hidden_size=32"],
        ["data.batch_size=64"],
        ["recipe=sasrec_ml100k", "seed=7"],
    ],
)
def test_resume_refuses_a_config_that_does_not_match(finished, capsys, args):
    before = snapshot(finished)
    code, _, err = cli([f"resume={finished}", *args], capsys)
    assert code == 2 and err.startswith("error: resume=") and err.count("\n") == 1, err
    assert snapshot(finished) == before


def test_resume_may_extend_training(seqfile, tmp_path, capsys, one_thread):
    """Resuming with the original overrides repeated (allowed) and a larger max_epochs trains on, keeping the log."""
    root = tmp_path / "runs"
    assert cli(tiny(seqfile, root, epochs=2), capsys)[0] == 0
    run_dir = only_run_dir(root)
    config = (run_dir / "config.yaml").read_bytes()
    rows = (run_dir / "logs" / "csv" / "metrics.csv").read_text().splitlines()
    code, _, err = cli([*tiny(seqfile, root, epochs=3), f"resume={run_dir}"], capsys)
    assert code == 0, err
    assert (run_dir / "config.yaml").read_bytes() == config
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 2
    after = (run_dir / "logs" / "csv" / "metrics.csv").read_text().splitlines()
    assert after[1 : len(rows) - 1] == rows[1:-1]  # the old rows are kept (the test row of the first run aside)
    assert len(after) > len(rows)


@pytest.mark.parametrize("damage", ["truncated", "random", "empty", "missing"])
def test_unreadable_checkpoint_is_one_line_and_leaves_the_run(seqfile, tmp_path, capsys, damage):
    root = tmp_path / "runs"
    assert cli(tiny(seqfile, root, epochs=1), capsys)[0] == 0
    run_dir = only_run_dir(root)
    (run_dir / "metrics.json").unlink()  # an unfinished run
    last = run_dir / "checkpoints" / "last.ckpt"
    data = last.read_bytes()
    if damage == "missing":
        last.unlink()
    else:
        last.write_bytes({"truncated": data[: len(data) // 2], "random": os.urandom(4096), "empty": b""}[damage])
    before = snapshot(run_dir)
    code, _, err = cli([f"resume={run_dir}"], capsys)
    err = without_log_lines(err)
    assert code == 1 and err.startswith("error: ") and err.count("\n") == 1, err
    assert snapshot(run_dir) == before


def test_evaluate_only_resume_tests_the_best_checkpoint(finished, capsys):
    before = snapshot(finished)
    code, out, err = cli([f"resume={finished}", "train=false"], capsys)
    assert code == 0, err
    printed = dict(line.split() for line in out.splitlines() if line.startswith("test/"))
    saved = _test_keys(metrics_of(finished))
    assert {k: f"{v:.4f}" for k, v in saved.items()} == printed
    assert snapshot(finished) == before  # evaluating reports; it does not rewrite the run


def test_evaluate_only_resume_returns_the_saved_metrics(finished, one_thread):
    from zoo.run import compose_resume, run

    metrics = run(compose_resume(str(finished), None, ["train=false"]))
    assert _test_keys(metrics) == _test_keys(metrics_of(finished))


def test_a_moved_run_is_evaluated_where_it_is_now(finished, tmp_path, one_thread):
    """A run directory copied elsewhere (its config.yaml still names the old place) evaluates from its new place,
    to the same metrics, and the original is not touched."""
    import shutil

    from zoo.run import compose_resume, run

    before = snapshot(finished)
    moved = tmp_path / "elsewhere" / finished.name
    shutil.copytree(finished, moved)
    cfg = compose_resume(str(moved), None, ["train=false"])
    assert cfg.run_dir == str(moved)
    assert _test_keys(run(cfg)) == _test_keys(metrics_of(finished))
    assert snapshot(finished) == before


def test_evaluate_only_resume_may_change_evaluation_settings_only(finished, capsys):
    """``train=false`` may evaluate with other ``eval.*`` settings (here other cut-offs) and leaves the run as it is;
    a training resume may not change them."""
    before = snapshot(finished)
    code, out, err = cli([f"resume={finished}", "train=false", "eval.ks=[3,10]"], capsys)
    assert code == 0, err
    printed = {line.split()[0] for line in out.splitlines() if line.startswith("test/")}
    assert "test/ndcg@3" in printed and "test/ndcg@3" not in metrics_of(finished)
    code, _, err = cli([f"resume={finished}", "eval.ks=[3,10]"], capsys)
    assert code == 2 and "eval.ks" in err and err.count("\n") == 1, err
    assert snapshot(finished) == before
