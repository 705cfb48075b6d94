"""The entry point: listing, run directory contents, error exits, resume, determinism, user plugins."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, SHRINK, without_log_lines

from zoo.run import main


def run_cli(args, capsys):
    """(exit code, stdout, stderr without the zoo's INFO log lines: what the command reported)."""
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, without_log_lines(out.err)


def only_run_dir(root: Path) -> Path:
    (run_dir,) = [p for p in root.glob("*/*") if p.is_dir()]
    return run_dir


def test_help_lists_everything(capsys):
    code, out, _ = run_cli(["--help"], capsys)
    assert code == 0
    for word in ("recipes:", "pop_ml100k", "models:", "pop", "datasets:", "ml100k", "losses:", "ce"):
        assert word in out
    assert run_cli(["list"], capsys)[1] == out


@pytest.mark.parametrize(
    "args",
    [
        ["recipe=nope"],
        ["recipe=pop_ml100k", "trainer.max_epoch=1"],
        ["recipe=pop_ml100k", "trainer.max_epochs=x"],
        ["recipe=pop_ml100k", "--verbose"],
        ["trainer.max_epochs=1"],
    ],
)
def test_errors_exit_2_with_one_line(args, capsys):
    code, out, err = run_cli(args, capsys)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1


def test_pop_run_writes_run_directory(run_root, capsys):
    code, out, _ = run_cli(["recipe=pop_ml100k", f"run_root={run_root}", "trainer.enable_progress_bar=false"], capsys)
    assert code == 0
    run_dir = only_run_dir(run_root)
    assert run_dir.parent.name == "pop_ml100k" and f"run directory: {run_dir}" in out
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0 < metrics["test/ndcg@10"] < metrics["test/recall@10"] <= 1
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["model"]["name"] == "pop" and config["data"]["name"] == "ml100k"
    assert not list(run_dir.rglob("*.tmp"))


def test_missing_data_file_is_one_line(tmp_path, capsys):
    code, _, err = run_cli(["recipe=pop_ml100k", "data.name=atomic", f"data.path={tmp_path}/nothing"], capsys)
    assert code == 1 and err.startswith("error: ") and "nothing" in err and err.count("\n") == 1


def plugin_args(run_root, *extra):
    recipe = REPO / "tests" / "plugins" / "last_item_ml100k.yaml"
    return [f"recipe={recipe}", f"run_root={run_root}", *SHRINK, *extra]


def test_user_plugin_model_trains_from_a_recipe(run_root, capsys):
    code, _, err = run_cli(plugin_args(run_root), capsys)
    assert code == 0, err
    run_dir = only_run_dir(run_root)
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "logs" / "csv" / "metrics.csv").is_file()
    assert "test/ndcg@10" in json.loads((run_dir / "metrics.json").read_text())


def test_user_model_by_import_path(run_root, capsys):
    args = [
        "recipe=pop_ml100k",
        "model.name=tests.plugins.last_item:LastItem",
        f"run_root={run_root}",
        "model.dim=8",  # validated against the path-named class's own Config
        *SHRINK,
    ]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    assert "dim: 8" in (only_run_dir(run_root) / "config.yaml").read_text()


def test_same_seed_repeats_exactly(tmp_path, capsys):
    results = []
    for name in ("a", "b"):
        assert run_cli(plugin_args(tmp_path / name), capsys)[0] == 0
        results.append(json.loads((only_run_dir(tmp_path / name) / "metrics.json").read_text()))
    for key in results[0]:
        if key.startswith("test/"):
            assert results[0][key] == results[1][key], key


def test_resume_continues_from_last_checkpoint(run_root, capsys):
    assert run_cli(plugin_args(run_root), capsys)[0] == 0
    run_dir = only_run_dir(run_root)
    first = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    code, _, err = run_cli(plugin_args(run_root, f"resume={run_dir}", "trainer.max_epochs=2"), capsys)
    assert code == 0, err
    assert only_run_dir(run_root) == run_dir  # same directory, no new run
    second = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert first["global_step"] == 2 and second["global_step"] == 4  # one more epoch of two batches


def test_resume_of_missing_run_is_an_error(tmp_path, capsys):
    code, _, err = run_cli(["recipe=pop_ml100k", f"resume={tmp_path}/none"], capsys)
    assert code == 2 and "resume=" in err


def test_module_entry_point_exit_status(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "zoo.run", "recipe=pop_ml100k", "trainer.max_epoch=1"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: unknown key 'trainer.max_epoch'")


def test_tensorboard_logger_writes_events(run_root, capsys):
    code, _, err = run_cli(["recipe=pop_ml100k", f"run_root={run_root}", "logger.name=tensorboard"], capsys)
    assert code == 0, err
    assert list(only_run_dir(run_root).glob("logs/tensorboard/events.out.tfevents.*"))


def test_print_config_prints_the_resolved_config_and_runs_nothing(run_root, capsys):
    code, out, err = run_cli(
        ["recipe=sasrec_ml100k", "model.hidden_size=32", f"run_root={run_root}", "--print-config"], capsys
    )
    assert code == 0, err
    printed = yaml.safe_load(out)
    assert printed["model"]["hidden_size"] == 32 and printed["recipe"] == "sasrec_ml100k"
    assert printed["trainer"]["monitor"] == "val/ndcg@10"  # the family's default, as config.yaml records it
    assert printed["data"]["train_len"] == 300
    assert not run_root.exists()
    code, _, err = run_cli(["recipe=sasrec_ml100k", "model.hidden=32", "--print-config"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "--print-config" in run_cli(["--help"], capsys)[1]


def test_evaluate_a_checkpoint_path_reports_its_metrics(run_root, capsys, one_thread):
    """``resume=<run>/checkpoints/best.ckpt train=false`` tests those weights: the run's metrics, not those of
    freshly initialised weights."""
    args = ["recipe=sasrec_ml100k", f"run_root={run_root}", *SHRINK, "model.hidden_size=16", "logger.name=none"]
    args.append("trainer.limit_test_batches=null")  # every test user: metrics above zero
    assert run_cli(args, capsys)[0] == 0
    run_dir = only_run_dir(run_root)
    saved = json.loads((run_dir / "metrics.json").read_text())
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    code, out, err = run_cli([f"resume={ckpt}", "train=false"], capsys)
    assert code == 0, err
    printed = dict(line.split() for line in out.splitlines() if line.startswith("test/"))
    assert printed == {k: f"{v:.4f}" for k, v in saved.items() if k.startswith("test/")}
    assert float(printed["test/ndcg@20"]) > 0
    assert json.loads((run_dir / "metrics.json").read_text()) == saved  # evaluating writes nothing


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_evaluating_a_missing_or_corrupt_checkpoint_is_one_line(run_root, capsys, damage):
    assert run_cli(plugin_args(run_root), capsys)[0] == 0
    run_dir = only_run_dir(run_root)
    for name in ("best.ckpt", "last.ckpt"):
        path = run_dir / "checkpoints" / name
        path.unlink() if damage == "missing" else path.write_bytes(b"\x00garbage")
    code, _, err = run_cli(plugin_args(run_root, f"resume={run_dir}", "train=false"), capsys)
    assert code == 1 and err.startswith("error: ") and err.count("\n") == 1
    assert ("no checkpoint" if damage == "missing" else "truncated or corrupt") in err
