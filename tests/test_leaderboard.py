"""The leaderboard: the grid runner (benchmarks/run.py), budgets and papers as data, the renderer."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import render as lb_render
from benchmarks import run as lb_run
from zoo.errors import ConfigError
from zoo.registry import MODELS

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "leaderboard"
METHODS_MD = Path(__file__).resolve().parents[2] / "shared" / "docs" / "methods.md"
DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def _grid(tmp_path: Path, **kwargs) -> lb_run.GridArgs:
    defaults = dict(methods=["pop"], datasets=["ml100k"], budget="smoke")
    defaults.update(kwargs)
    return lb_run.GridArgs(**defaults, results_dir=tmp_path / "results", run_root=tmp_path / "runs")


# -- rendering ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> tuple[Path, str]:
    out_dir = tmp_path_factory.mktemp("leaderboard")
    # the fixtures' configs are made up: not checked against today's recipes here (see the stale-mark test)
    out = lb_render.render(FIXTURES, out_dir / "LEADERBOARD.md", out_dir / "plots", lb_run.PAPERS_PATH, stale=False)
    return out_dir, out.read_text()


def _section(text: str, dataset: str) -> str:
    return text.split(f"(`{dataset}`)", 1)[1].split("\n## ", 1)[0]


def test_render_tables_show_ours_paper_and_relative_difference(rendered) -> None:
    _, text = rendered
    beauty = _section(text, "beauty")
    rows = [line for line in beauty.splitlines() if line.startswith("| ") and not line.startswith("| Method")]
    assert [r.split(" | ")[0] for r in rows] == [
        "| sasrec",
        "| sasrec_bce",
        "| pop",
        "| tiger (not run)",
        "| p5 (not run)",
        "| p5 (not run)",
        "| p5_cid (not run)",
    ]
    bce = rows[1]
    # ours 0.0400 vs TIGER Table 1 SASRec 0.0387 -> +3.4%; 0.0500 vs 0.0605 -> -17.4%
    assert "0.0400 (paper 0.0387, +3.4%)" in bce and "0.0500 (paper 0.0605, -17.4%)" in bce
    assert "12/200 ep" in bce and "9.0 min" in bce and "1.5 GiB" in bce and "2 CPU, load 1.5→2.0" in bce
    assert "01234567 (dirty)" in bce
    assert "paper 0.0454" in rows[3] and "paper 0.0163" in rows[4]
    assert "row 'SASRec (BCE, S3-Rec training)'" in beauty and "Table 1" in beauty
    assert "| pop | cpu | 0.0255 | 0.0140 | 0.0498 | 0.0220 | — | 5 s | 480 MiB |" in _section(text, "ml100k")
    assert "| p5 (not run) | — | paper 0.0061 |" in _section(text, "sports") and "paper 0.0233" in _section(
        text, "sports"
    )
    assert "| p5_cid (not run) | — | paper 0.0261 |" in _section(text, "yelp")  # paper rows only, no runs
    assert "| sasrec_bce | cpu | 0.0300 (paper 0.0318, -5.7%) |" in text  # the NDCG@10 overview


def test_render_lists_other_files_without_tabulating_them(rendered) -> None:
    out_dir, text = rendered
    others = text.split("## Other benchmarks", 1)[1]
    assert "[peer_recbole_sasrec.json]" in others
    assert "[pop__toys__cpu.json]" in others and "unreadable" in others
    tables = text.split("## Other benchmarks")[0]
    assert "peer_recbole" not in tables and "toys__cpu" not in tables
    for link in re.findall(r"\]\(([^)]+\.(?:json|png))\)", text):
        assert (out_dir / link).resolve().is_file(), link


def test_render_tabulates_the_kar_benchmark_in_the_ctr_section(tmp_path: Path) -> None:
    from benchmarks import kar_ml100k

    runs = [
        {
            "backbone": "din",
            "variant": v,
            "seed": s,
            "test/auc": 0.75 + gain + s / 1000,
            "test/logloss": 0.5,
            "test/gauc": 0.7,
        }
        for v, gain in (("none", 0.0), ("reasoning", 0.004), ("fact", 0.002), ("both", 0.01))
        for s in (0, 1)
    ]
    result = {
        "seeds": [0, 1],
        "complete": False,
        "missing": ["deepfm none seed 0"],
        "cells": kar_ml100k.table(runs, ["din"]),
    }
    (tmp_path / "kar_ml100k.json").write_text(json.dumps(result))
    text = lb_render.render(tmp_path, tmp_path / "LEADERBOARD.md", tmp_path / "plots", lb_run.PAPERS_PATH).read_text()
    section = text.split("## CTR models", 1)[1].split("\n## ", 1)[0]
    row = next(line for line in section.splitlines() if line.startswith("| din |"))
    assert "0.7505 ± 0.0007" in row and "0.7605 ± 0.0007" in row and "+0.0100 (+1.33%)" in row
    assert row.endswith("| yes | yes |") and "Incomplete: 1 runs missing." in section


def test_render_writes_one_png_per_dataset_with_results(rendered) -> None:
    out_dir, _ = rendered
    plots = sorted(p.name for p in (out_dir / "plots").iterdir())
    assert plots == ["beauty.png", "ml100k.png"]
    assert (out_dir / "plots" / "beauty.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_papers_rejects_unknown_source(tmp_path: Path) -> None:
    bad = tmp_path / "papers.yaml"
    bad.write_text("sources: {}\nrows:\n  - {method: x, dataset: beauty, source: nope, values: {recall@5: 0.1}}\n")
    with pytest.raises(ConfigError, match="unknown source 'nope'"):
        lb_render.load_papers(bad)


@pytest.mark.skipif(not METHODS_MD.is_file(), reason="shared/docs/methods.md not available")
def test_papers_yaml_matches_methods_md() -> None:
    """Every published number in papers.yaml is the one in the methods document (TIGER Table 1)."""
    doc = METHODS_MD.read_text()
    table = {}
    for name in ("SASRec", "TIGER"):
        line = next(line for line in doc.splitlines() if line.startswith(f"| {name} |"))
        for dataset, cell in zip(("beauty", "sports", "toys"), line.strip("| \n").split(" | ")[1:]):
            table[(name, dataset)] = [float(v) for v in cell.split(" / ")]
    p5 = re.search(r"TIGER paper's P5 row \(Beauty\s+([.\d/]+)\)", doc).group(1)
    table[("P5", "beauty")] = [float(v) for v in p5.split("/")]
    papers = lb_render.load_papers()
    method_of = {"SASRec": "sasrec_bce", "TIGER": "tiger", "P5": "p5"}
    assert len([r for r in papers.rows if "(TIGER)" in r.paper and r.method in method_of.values()]) >= len(table)
    for (name, dataset), values in table.items():
        row = papers.find(method_of[name], dataset)
        assert [row.values[m] for m in lb_render.METRICS] == values, (name, dataset)


def test_papers_yaml_p5_rows_match_methods_next_md() -> None:
    """The P5 rows of papers.yaml are the methods-next document's ("TIGER paper's P5 row", "How to Index Item
    IDs" random and collaborative ids), HR@5 / NDCG@5 / HR@10 / NDCG@10 per dataset."""
    doc = (METHODS_MD.parent / "methods-next.md").read_text()
    sources = {
        ("p5", "(TIGER)"): "| TIGER paper's P5 row",
        ("p5", "How to Index"): '| "How to Index Item IDs" (2305.06569), random ids',
        ("p5_cid", "How to Index"): "| same, collaborative ids",
    }
    papers = lb_render.load_papers()
    checked = 0
    for (method, source), prefix in sources.items():
        cells = next(line for line in doc.splitlines() if line.startswith(prefix)).strip("| \n").split(" | ")[1:]
        for dataset, cell in zip(("beauty", "sports", "toys", "yelp"), cells):
            rows = [r for r in papers.rows if (r.method, r.dataset) == (method, dataset) and source in r.paper]
            if cell == "-":
                assert not rows, (method, source, dataset)
                continue
            assert len(rows) == 1, (method, source, dataset)
            assert [rows[0].values[m] for m in lb_render.METRICS] == [float(v) for v in cell.split("/")]
            checked += 1
    assert checked == 9


# -- the grid ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["methods=sasrek", "datasets=ml100k"], r"unknown method 'sasrek'; valid: .*pop"),
        (["methods=pop", "datasets=ml1m"], r"unknown dataset 'ml1m'; valid: beauty, sports, toys, yelp, ml100k"),
        (["methods=msl_books", "datasets=ml100k"], r"unknown method 'msl_books'"),
        (
            ["methods=pop", "datasets=ml100k", "budget=huge"],
            r"unknown budget 'huge'; valid: smoke, cpu, cpu-long, cpu-llm, gpu",
        ),
        (["datasets=ml100k"], r"no methods given"),
        (["methods=pop", "epochs=3"], r"unknown argument 'epochs=3'"),
        (["methods=pop", "datasets=ml100k", "force=maybe"], r"force=maybe: expected true or false"),
        (["methods=pop", "datasets=ml100k", "logger=mlflow"], r"unknown logger 'mlflow'; valid: csv, tensorboard"),
    ],
)
def test_bad_grid_arguments_exit_2_with_one_line(argv, expected, capsys) -> None:
    assert lb_run.main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.search(expected, err), err


def test_budget_overrides_layer_budget_then_model_then_method() -> None:
    budgets = {
        "b": {
            "overrides": {"trainer.max_epochs": 3, "trainer.max_time": "00:00:10:00"},
            "methods": {"sasrec": {"trainer.max_epochs": 5}, "sasrec_bce": {"trainer.max_epochs": 7}},
        }
    }
    run_dir = Path("/tmp/x")
    overrides = lb_run.cell_overrides(budgets, "b", "sasrec_bce", "sasrec", "wandb", run_dir)
    assert overrides == [
        "trainer.max_epochs=3",
        'trainer.max_time="00:00:10:00"',
        "trainer.max_epochs=5",
        "trainer.max_epochs=7",
        'logger.name="wandb"',
        'logger.project="zoo-leaderboard"',
        'logger.group="b"',
        'run_dir="/tmp/x"',
    ]
    assert lb_run.cell_overrides(budgets, "b", "sasrec", "sasrec", None, run_dir)[2:] == [
        "trainer.max_epochs=5",
        'run_dir="/tmp/x"',
    ]
    with pytest.raises(ConfigError, match="unknown logger 'mlflow'"):
        lb_run.cell_overrides(budgets, "b", "pop", "pop", "mlflow", run_dir)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cpu: {threads: 0}", "threads must be a positive integer"),
        ("cpu: {epochs: 3}", r"unknown keys \['epochs'\]"),
        ("- cpu", "expected a mapping of budget name"),
    ],
)
def test_malformed_budgets_file_is_a_config_error(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "budgets.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected):
        lb_run.load_budgets(path)


def test_every_budget_composes_with_every_recipe_cell(tmp_path: Path) -> None:
    """Budgets are data: each one must be valid for every <method>_<dataset> recipe it can be applied to."""
    budgets = lb_run.load_budgets()
    assert {"smoke", "cpu", "gpu"} <= set(budgets)
    assert budgets["smoke"].get("tiny_models") is True
    for (method, dataset), recipe in lb_run.recipe_cells().items():
        for budget in budgets:
            cfg, overrides = lb_run.compose_cell(_grid(tmp_path, budget=budget), budgets, method, dataset, recipe)
            assert cfg.recipe == recipe and str(tmp_path) in cfg.run_dir
            if budget == "smoke":  # each model's own tiny variant comes first
                tiny = list(getattr(MODELS.get(cfg.model.name), "test_overrides", ()))
                assert overrides[: len(tiny)] == tiny


def test_wandb_logger_offline_in_leaderboard_project(tmp_path: Path) -> None:
    from lightning.pytorch.loggers import WandbLogger

    from zoo.trainer import build_loggers

    args = _grid(tmp_path, budget="cpu", logger="wandb")
    cfg, _ = lb_run.compose_cell(args, lb_run.load_budgets(), "pop", "ml100k", "pop_ml100k")
    loggers = build_loggers(cfg, tmp_path)
    wandb = [lg for lg in loggers if isinstance(lg, WandbLogger)]
    assert len(wandb) == 1
    assert wandb[0]._offline is True  # no account, no network
    assert wandb[0]._wandb_init["project"] == "zoo-leaderboard" and wandb[0]._wandb_init["group"] == "cpu"


def test_plan_runs_missing_incomplete_and_forced_cells(tmp_path: Path) -> None:
    args = _grid(tmp_path, methods=["pop", "sasrec"], datasets=["ml100k", "beauty"])
    results = args.results_dir
    results.mkdir(parents=True)
    (results / "pop__beauty__smoke.json").write_text('{"kind": "leaderboard_cell", "metr')  # interrupted write
    states = {(m, d): s for m, d, s in lb_run.plan(args)}
    assert states == {(m, d): "todo" for m in ("pop", "sasrec") for d in ("ml100k", "beauty")}
    # a file of another budget, or one without test metrics, is not a finished cell
    done = {"kind": lb_run.CELL_KIND, "method": "pop", "dataset": "ml100k", "budget": "smoke"}
    path = results / "pop__ml100k__smoke.json"
    path.write_text(json.dumps({**done, "budget": "cpu", "metrics": {"test/x": 1}}))
    assert lb_run.finished_result(path, "pop", "ml100k", "smoke") is None
    path.write_text(json.dumps({**done, "metrics": {}}))
    assert lb_run.finished_result(path, "pop", "ml100k", "smoke") is None
    path.write_text(json.dumps({**done, "metrics": {"test/ndcg@10": 0.1}}))
    assert lb_run.finished_result(path, "pop", "ml100k", "smoke")["metrics"] == {"test/ndcg@10": 0.1}


def test_grid_runs_each_unfinished_cell_in_its_own_subprocess(tmp_path: Path, monkeypatch, capsys) -> None:
    args = _grid(tmp_path, methods=["pop", "sasrec", "sasrec_bce"])
    calls = []
    states = {("pop", "ml100k"): "done", ("sasrec", "ml100k"): "todo", ("sasrec_bce", "ml100k"): "stale"}
    monkeypatch.setattr(lb_run, "plan", lambda _: [(m, d, s) for (m, d), s in states.items()])

    def fake_run(command, cwd, env):
        calls.append(command)
        return subprocess.CompletedProcess(command, 1)  # the cell crashes

    monkeypatch.setattr(lb_run.subprocess, "run", fake_run)
    assert lb_run.run_grid(args) == 1  # a failed cell fails the grid, after the others ran
    assert [c[:4] for c in calls] == [
        [sys.executable, "-m", "benchmarks.run", "_cell=sasrec:ml100k"],
        [sys.executable, "-m", "benchmarks.run", "_cell=sasrec_bce:ml100k"],
    ]
    out = capsys.readouterr()
    assert "[done] pop on ml100k" in out.out and "FAILED (exit 1)" in out.out and "2 cell(s) failed" in out.err
    calls.clear()
    args.dry_run = True
    assert lb_run.run_grid(args) == 0 and calls == []


def test_run_cell_writes_a_complete_result(tmp_path: Path) -> None:
    """pop on MovieLens-100K (embedded) at the smoke budget, in process: the JSON has every field it promises."""
    args = _grid(tmp_path)
    path = lb_run.run_cell(args, "pop", "ml100k")
    assert path == args.results_dir / "pop__ml100k__smoke.json"
    record = json.loads(path.read_text())
    for key in ("metrics", "config", "git_commit", "hardware", "wall_time_s", "peak_memory_mb", "overrides"):
        assert record[key], key
    assert (record["method"], record["dataset"], record["budget"], record["recipe"]) == (
        "pop",
        "ml100k",
        "smoke",
        "pop_ml100k",
    )
    assert 0 < record["metrics"]["test/recall@10"] < 1 and record["training"] is None
    assert record["config"]["trainer"]["limit_train_batches"] == 2
    assert Path(record["run_dir"], "metrics.json").is_file() and str(tmp_path) in record["run_dir"]
    # the grid resumes: this cell is done; once its recipe or budget changes it is stale; force re-runs it
    assert lb_run.plan(args) == [("pop", "ml100k", "done")]
    record["config"]["data"]["max_len"] = 7
    path.write_text(json.dumps(record))
    assert lb_run.plan(args) == [("pop", "ml100k", "stale")]
    args.force = True
    assert lb_run.plan(args) == [("pop", "ml100k", "todo")]


def test_a_cell_is_stale_once_the_recipe_of_its_stage_changes(tmp_path: Path, monkeypatch) -> None:
    """Laser trains sasrec_ml100k as its retriever stage first: a change of that recipe makes laser's cell stale,
    though the cell's own settings did not change. Records from before stages were recorded go by git history."""
    from omegaconf import OmegaConf

    from zoo.config import compose as compose_recipe

    args = _grid(tmp_path, methods=["laser"])
    budgets = lb_run.load_budgets()
    cfg, overrides = lb_run.compose_cell(args, budgets, "laser", "ml100k", "laser_ml100k")
    stages = lb_run.stage_settings(cfg)
    assert stages["retriever"]["recipe"] == "sasrec_ml100k"
    assert stages["retriever"]["config"]["optim.lr"] == compose_recipe("sasrec_ml100k").optim.lr
    assert lb_run.stage_settings(lb_run.compose_cell(args, budgets, "pop", "ml100k", "pop_ml100k")[0]) == {}
    record = {
        "kind": lb_run.CELL_KIND,
        **{"method": "laser", "dataset": "ml100k", "budget": "smoke", "metrics": {"test/ndcg@10": 0.1}},
        "config": OmegaConf.to_container(cfg, resolve=True),
        "git_commit": "unknown",
        "stages": stages,
    }
    path = args.results_dir / "laser__ml100k__smoke.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(record))
    assert lb_run.plan(args) == [("laser", "ml100k", "done")]
    record["stages"]["retriever"]["config"]["optim.lr"] = 0.0001  # the retriever recipe of the past
    path.write_text(json.dumps(record))
    assert lb_run.plan(args) == [("laser", "ml100k", "stale")]
    del record["stages"]  # an older record: the stage recipe's files against the record's commit
    path.write_text(json.dumps(record))
    asked = []
    monkeypatch.setattr(lb_run, "changed_since", lambda commit, files: asked.append((commit, files)) or False)
    assert lb_run.plan(args) == [("laser", "ml100k", "done")]
    names = {f.name for f in asked[0][1]}
    assert asked[0][0] == "unknown" and {"sasrec_ml100k.yaml", "sasrec.yaml", "default.yaml"} <= names
    monkeypatch.undo()
    assert lb_run.plan(args) == [("laser", "ml100k", "stale")]  # "unknown": git cannot tell, so it runs again


def test_changed_since_reads_git_history() -> None:
    recipe = REPO / "recipes" / "sasrec_ml100k.yaml"
    last = subprocess.run(
        ["git", "log", "-1", "--format=%H", "--", str(recipe)], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(["git", "diff", "--name-only", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    if not last or "recipes/sasrec_ml100k.yaml" in dirty:
        pytest.skip("needs a git clone whose sasrec_ml100k recipe is committed")
    assert lb_run.changed_since(last, [recipe]) is False
    assert lb_run.changed_since(last + "+dirty", [recipe]) is False
    assert lb_run.changed_since(f"{last}~1", [recipe]) is True  # the commit changed it
    assert lb_run.changed_since("unknown", [recipe]) is True
    assert lb_run.changed_since("0" * 40, [recipe]) is True


def test_render_marks_the_cells_that_are_stale_today(tmp_path: Path) -> None:
    """A cell run with today's recipe is not marked; once its recorded settings differ from the recipe it is."""
    args = _grid(tmp_path)
    path = lb_run.run_cell(args, "pop", "ml100k")
    args.results_dir.joinpath("pop__beauty__smoke.json").write_text("{}")  # not a cell: listed, never marked
    out = tmp_path / "LEADERBOARD.md"

    def overview_row() -> str:
        text = lb_render.render(args.results_dir, out, tmp_path / "plots", lb_run.PAPERS_PATH).read_text()
        return next(line for line in text.splitlines() if line.startswith("| pop | smoke |"))

    assert lb_render.STALE_MARK not in overview_row()
    record = json.loads(path.read_text())
    record["config"]["data"]["max_len"] = 7
    path.write_text(json.dumps(record))
    assert overview_row().endswith(f"{lb_render.STALE_MARK} |")
    assert f"| pop {lb_render.STALE_MARK} | smoke |" in out.read_text()


def test_epochs_run_counts_validated_epochs_from_the_csv_log(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "csv" / "metrics.csv"
    log.parent.mkdir(parents=True)
    log.write_text(
        "epoch,step,train/loss,val/ndcg@10,test/ndcg@10\n"
        "0,49,5.0,,\n0,87,,0.01,\n1,99,4.0,,\n1,175,,0.02,\n2,199,3.5,,\n"  # epoch 2 cut by the time cap
        "2,199,,,0.015\n"
    )
    assert lb_run.epochs_run(tmp_path) == {"epochs": 2, "steps": 200}
    assert lb_run.epochs_run(tmp_path / "missing") is None


@pytest.mark.slow
def test_grid_command_end_to_end_and_resume(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "benchmarks.run", "methods=pop", "datasets=ml100k", "budget=smoke"]
    command += [f"results_dir={tmp_path / 'results'}", f"run_root={tmp_path / 'runs'}", "logger=wandb"]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"}
    first = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    record = json.loads((tmp_path / "results" / "pop__ml100k__smoke.json").read_text())
    assert record["config"]["logger"] == {
        "name": "wandb",
        "project": "zoo-leaderboard",
        "group": "smoke",
        "offline": True,
    }
    assert list(Path(record["run_dir"]).glob("wandb/offline-run-*"))  # the offline run was logged locally
    second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0 and "[done] pop on ml100k (smoke)" in second.stdout


@pytest.mark.slow
@pytest.mark.skipif(not (DATASETS / "Beauty").is_dir(), reason="shared datasets not available")
def test_pop_on_beauty_real_data(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ZOO_DATA_DIR", str(DATASETS))
    path = lb_run.run_cell(_grid(tmp_path, datasets=["beauty"]), "pop", "beauty")
    metrics = json.loads(path.read_text())["metrics"]
    assert metrics["test/recall@10"] > 0


def test_protocol_benchmark_retests_a_cell_and_masking_seen_items_only_helps(tmp_path: Path) -> None:
    """A smoke SASRec cell re-tested from its best checkpoint: the leaderboard protocol gives the cell's numbers
    again, and masking the user's items can only move a target up (MovieLens-100K has no repeated items)."""
    from benchmarks import protocols

    args = _grid(tmp_path, methods=["sasrec"])
    lb_run.run_cell(args, "sasrec", "ml100k")
    path = protocols.run(["sasrec__ml100k__smoke"], results_dir=args.results_dir, out_dir=tmp_path)
    (row,) = json.loads(path.read_text())["cells"]
    assert row["matches_cell"] is True
    assert all(row["mask_seen"][m] >= row["leaderboard"][m] for m in lb_render.METRICS)
    assert row["mask_seen"] != row["leaderboard"]
    assert protocols.main(["cells=nope__ml100k__smoke"]) == 2
    assert protocols.main(["cells=sasrec__ml100k__smoke", "threads=two"]) == 2
    assert protocols.main(["cells=sasrec__ml100k__smoke", "stray"]) == 2


def test_a_key_newer_than_a_record_counts_at_its_default() -> None:
    """A record run before a key joined the schema lacks it: it ran at the key's default (new settings are off by
    default), so today's config at that default is the same cell and any other value is a different one."""
    from omegaconf import OmegaConf

    from zoo.config import compose, config_schema

    def settings(cfg, overrides, record=None):
        config = OmegaConf.to_container(cfg, resolve=True)
        if record:  # the record of an older schema: no eval.prior_weight
            del config["eval"]["prior_weight"]
        defaults = OmegaConf.to_container(config_schema(cfg.model, cfg.loss))
        return lb_run.settings_of(config, "uem_ml100k", overrides, 1, defaults)

    assert compose("uem_ml100k").eval.prior_weight == 4  # the recipe sets it
    at_default = ["eval.prior_weight=0"]
    old = settings(compose("uem_ml100k", at_default), at_default, record=True)
    assert old["config"]["eval.prior_weight"] == 0
    assert settings(compose("uem_ml100k", at_default), at_default) == old
    assert settings(compose("uem_ml100k"), at_default) != old
    no_defaults = lb_run.settings_of({"eval": {}}, "uem_ml100k", at_default, 1)
    assert no_defaults["config"]["eval.prior_weight"] == lb_run.UNSET  # without defaults a missing key differs
