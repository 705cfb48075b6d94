"""Render ``benchmarks/LEADERBOARD.md`` and ``benchmarks/plots/<dataset>.png`` from the result JSON files.

``python -m benchmarks.render [results_dir=DIR] [out=FILE] [plots_dir=DIR] [papers=FILE] [claims=FILE]
[claims_out=FILE]``

Only the leaderboard cells (``<method>__<dataset>__<budget>.json`` written by ``benchmarks.run``) are tabulated;
other result files in the folder are listed under "Other benchmarks" with a link, as they are. Each row shows
our number, the published one (``benchmarks/papers.yaml``) and the relative difference (ours - paper) / paper.
It also writes the claims ledger ``benchmarks/CLAIMS.md`` from ``benchmarks/claims.yaml`` (``benchmarks.claims``).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from benchmarks.claims import CLAIMS_MD, CLAIMS_PATH, render_claims
from benchmarks.common import key_values
from benchmarks.run import CELL_KIND, PAPERS_PATH, GridArgs, is_stale, load_budgets, recipe_cells
from zoo.errors import ConfigError, ZooError
from zoo.io import atomic_path, write_text_atomic
from zoo.tasks import TASKS

BENCH_DIR = Path(__file__).resolve().parent
METRICS = TASKS.get("sequential").columns  # the columns of the ranking families (zoo.tasks)
CTR_METRICS = TASKS.get("ctr").columns
METRIC_TITLES = {
    "recall@5": "Recall@5",
    "ndcg@5": "NDCG@5",
    "recall@10": "Recall@10",
    "ndcg@10": "NDCG@10",
    "auc": "AUC",
    "gauc": "GAUC",
    "logloss": "LogLoss",
}


def family(cell: dict) -> str:
    """The task family of a cell's model (``zoo.tasks``); a model no longer registered counts as sequential."""
    from zoo.registry import MODELS, populate

    populate()
    name = ((cell.get("config") or {}).get("model") or {}).get("name", "")
    return getattr(MODELS.get(name), "task", "sequential") if name in MODELS else "sequential"


def ctr_table(dataset: str, cells: list[dict], link_base: Path) -> list[str]:
    """Markdown lines of one dataset's CTR table (the CTR family's columns), best AUC first."""
    header = ["Method", "Budget", *(METRIC_TITLES[m] for m in CTR_METRICS), "Training", "Wall time", "Result"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for cell in sorted(cells, key=lambda c: (-(_metric(c, "auc") or 0.0), c["method"], c["budget"])):
        values = [f"{v:.4f}" if (v := _metric(cell, m)) is not None else "—" for m in CTR_METRICS]
        link = os.path.relpath(cell["_path"], link_base)
        row = [_method(cell), cell["budget"], *values, _training(cell), _duration(cell.get("wall_time_s"))]
        lines.append("| " + " | ".join([*row, f"[json]({link})"]) + " |")
    return lines


SORT_METRIC = "ndcg@10"


@dataclass
class PaperRow:
    """One published row on one dataset, with its provenance."""

    method: str
    dataset: str
    row: str
    paper: str
    table: str
    values: dict[str, float]
    note: str = ""  # how the paper's protocol differs from the leaderboard's, when it does

    def citation(self) -> str:
        text = f"{self.paper}, {self.table}, row '{self.row}'"
        return f"{text}. {self.note}" if self.note else text


@dataclass
class Papers:
    dataset_titles: dict[str, str] = field(default_factory=dict)  # display order = insertion order
    rows: list[PaperRow] = field(default_factory=list)

    def find(self, method: str, dataset: str) -> PaperRow | None:
        return next((r for r in self.rows if r.method == method and r.dataset == dataset), None)


def load_papers(path: Path = PAPERS_PATH) -> Papers:
    """Read the published numbers; a row naming an unknown source or metric is a ConfigError."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read papers file {path}: {str(err).splitlines()[0]}") from None
    sources = data.get("sources") or {}
    papers = Papers({key: (spec or {}).get("title", key) for key, spec in (data.get("datasets") or {}).items()})
    for i, row in enumerate(data.get("rows") or []):
        source = sources.get(row.get("source"))
        if source is None:
            raise ConfigError(f"{path}: rows[{i}] names unknown source '{row.get('source')}'")
        unknown = set(row.get("values") or {}) - set(METRICS)
        if unknown or not row.get("values"):
            raise ConfigError(f"{path}: rows[{i}] needs values for {', '.join(METRICS)} (got {sorted(unknown)})")
        papers.rows.append(
            PaperRow(
                method=str(row["method"]),
                dataset=str(row["dataset"]),
                row=str(row.get("row", row["method"])),
                paper=str(source["paper"]),
                table=str(source["table"]),
                values={k: float(v) for k, v in row["values"].items()},
                note=str(row.get("note") or ""),
            )
        )
    return papers


def load_results(results_dir: Path) -> tuple[list[dict], list[tuple[Path, str]]]:
    """Split ``results_dir/*.json`` into leaderboard cells (parsed) and the other benchmark files (path, note:
    empty, or why a file is not readable JSON)."""
    cells, others = [], []
    for path in sorted(Path(results_dir).glob("*.json")):
        if path.name.startswith("."):
            continue  # a temporary file of an atomic write in progress
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            others.append((path, f"unreadable: {type(err).__name__}"))
            continue
        if isinstance(record, dict) and record.get("kind") == CELL_KIND and record.get("metrics"):
            record["_path"] = path
            cells.append(record)
        else:
            others.append((path, ""))
    return cells, others


STALE_MARK = "†"


def mark_stale(cells: list[dict]) -> None:
    """Set ``cell["_stale"]``: whether the cell no longer stands for its recipe as it is today (``benchmarks.run``
    would re-run it: its recipe, budget or stage recipe changed since). A cell whose recipe or budget no longer
    exists, or that cannot be composed today, is not marked."""
    budgets, recipes = load_budgets(), recipe_cells()
    for cell in cells:
        recipe = recipes.get((cell.get("method"), cell.get("dataset")))
        cell["_stale"] = False
        if recipe is None or cell.get("budget") not in budgets or not cell.get("config"):
            continue
        args = GridArgs(methods=[cell["method"]], datasets=[cell["dataset"]], budget=cell["budget"])
        try:
            cell["_stale"] = is_stale(args, budgets, recipe, cell)
        except ZooError:
            continue


def _method(cell: dict) -> str:
    return cell["method"] + (f" {STALE_MARK}" if cell.get("_stale") else "")


def relative_difference(ours: float, paper: float) -> float:
    """(ours - paper) / paper."""
    return (ours - paper) / paper


def _metric(cell: dict, metric: str) -> float | None:
    value = cell["metrics"].get(f"test/{metric}")
    return float(value) if value is not None else None


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def _metric_cell(ours: float | None, paper: float | None) -> str:
    if paper is None:
        return _number(ours)
    if ours is None:
        return f"paper {paper:.4f}"
    return f"{ours:.4f} (paper {paper:.4f}, {relative_difference(ours, paper):+.1%})"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _memory(mb: float | None) -> str:
    if mb is None:
        return "—"
    return f"{mb / 1024:.1f} GiB" if mb >= 1024 else f"{mb:.0f} MiB"


def _hardware(cell: dict) -> str:
    hw = cell.get("hardware") or {}
    device = hw.get("cuda") or f"{hw.get('cpu_count', '?')} CPU"
    if cell.get("torch_threads"):
        threads = cell["torch_threads"]
        device += f" ({threads} thread{'s' if threads != 1 else ''})"
    start, end = cell.get("load_avg_1m_start"), hw.get("load_avg_1m")
    load = f", load {start}→{end}" if start is not None else f", load {end}"
    return device + load


def _training(cell: dict) -> str:
    training = cell.get("training")
    if not training:
        return "—"
    max_epochs = ((cell.get("config") or {}).get("trainer") or {}).get("max_epochs")
    bound = f"/{max_epochs}" if max_epochs and max_epochs > 0 else ""
    return f"{training['epochs']}{bound} ep"


def _commit(cell: dict) -> str:
    commit = str(cell.get("git_commit", "unknown"))
    return commit[:8] + (" (dirty)" if commit.endswith("+dirty") else "")


def _sorted_cells(cells: list[dict]) -> list[dict]:
    return sorted(cells, key=lambda c: (-(_metric(c, SORT_METRIC) or 0.0), c["method"], c["budget"]))


def _dataset_order(cells: list[dict], papers: Papers) -> list[str]:
    extra = sorted({c["dataset"] for c in cells} - set(papers.dataset_titles))
    return list(papers.dataset_titles) + extra


def dataset_table(dataset: str, cells: list[dict], papers: Papers, link_base: Path) -> list[str]:
    """Markdown lines of one dataset's table (our runs, best first, then paper-only rows) and its sources."""
    header = ["Method", "Budget", *(METRIC_TITLES[m] for m in METRICS), "Training", "Wall time", "Peak memory"]
    header += ["Hardware", "Commit", "Result"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    cited: list[PaperRow] = []
    for cell in _sorted_cells(cells):
        paper = papers.find(cell["method"], dataset)
        if paper is not None and paper not in cited:
            cited.append(paper)
        values = [_metric_cell(_metric(cell, m), paper.values.get(m) if paper else None) for m in METRICS]
        link = os.path.relpath(cell["_path"], link_base)
        row = [_method(cell), cell["budget"], *values, _training(cell), _duration(cell.get("wall_time_s"))]
        row += [_memory(cell.get("peak_memory_mb")), _hardware(cell), _commit(cell), f"[json]({link})"]
        lines.append("| " + " | ".join(row) + " |")
    ran = {c["method"] for c in cells}
    for paper in (r for r in papers.rows if r.dataset == dataset and r.method not in ran):
        cited.append(paper)
        values = [_metric_cell(None, paper.values.get(m)) for m in METRICS]
        lines.append("| " + " | ".join([f"{paper.method} (not run)", "—", *values] + ["—"] * 6) + " |")
    if cited:
        lines.append("")
        lines += [f"- paper numbers for **{p.method}**: {p.citation()}" for p in cited]
    return lines


def overview_table(datasets: list[str], cells: list[dict], papers: Papers) -> list[str]:
    """NDCG@10 of every (method, budget) on every dataset, one line per (method, budget)."""
    keys = sorted({(c["method"], c["budget"]) for c in cells})
    lines = ["| Method | Budget | " + " | ".join(datasets) + " |", "|---|---|" + "---|" * len(datasets)]
    for method, budget in keys:
        row = [method, budget]
        for dataset in datasets:
            cell = next(
                (c for c in cells if (c["method"], c["budget"], c["dataset"]) == (method, budget, dataset)), None
            )
            paper = papers.find(method, dataset)
            ours = _metric(cell, SORT_METRIC) if cell else None
            text = _metric_cell(ours, paper.values.get(SORT_METRIC) if paper else None) if cell else "—"
            row.append(text + (f" {STALE_MARK}" if cell and cell.get("_stale") else ""))
        lines.append("| " + " | ".join(row) + " |")
    return lines


def kar_table(result: dict, link: str) -> list[str]:
    """Markdown lines of ``benchmarks.kar_ml100k``'s result: test AUC (mean ± std over the seeds) of every backbone
    alone and with each kind of KAR knowledge, and whether the full KAR's gain clears the larger seed spread."""
    variants = (("none", "alone"), ("reasoning", "+ reasoning"), ("fact", "+ fact"), ("both", "+ KAR (both)"))
    seeds = len(result.get("seeds", []))
    lines = [
        f"### KAR on MovieLens-100K (KAR's user split; test AUC, mean ± std over {seeds} seeds; [json]({link}))",
        "",
        "| Backbone | " + " | ".join(title for _, title in variants) + " | KAR gain | beyond the spread | 1 + 1 > 2 |",
        "|---|" + "---|" * (len(variants) + 3),
    ]
    for backbone, cell in result.get("cells", {}).items():
        row = [backbone]
        for variant, _ in variants:
            auc = cell.get(variant, {}).get("auc")
            row.append(f"{auc['mean']:.4f} ± {auc['std']:.4f}" if auc else "—")
        gain = cell.get("both_auc_gain")
        row.append(f"{gain['abs']:+.4f} ({gain['relative']:+.2%})" if gain else "—")
        row.append(("yes" if gain["beyond_spread"] else "no") if gain else "—")
        both = cell.get("both_exceeds_sum_of_parts")
        row.append("—" if both is None else ("yes" if both else "no"))
        lines.append("| " + " | ".join(row) + " |")
    if not result.get("complete", False):
        lines += ["", f"Incomplete: {len(result.get('missing', []))} runs missing."]
    return lines


def render_markdown(
    cells: list[dict], others: list[tuple[Path, str]], papers: Papers, out: Path, plots: dict[str, Path]
) -> str:
    """The whole LEADERBOARD.md text (links relative to ``out``'s folder)."""
    base = out.parent
    ctr_cells = [c for c in cells if family(c) == "ctr"]
    cells = [c for c in cells if family(c) != "ctr"]
    datasets = _dataset_order(cells, papers)
    budgets = {c["budget"]: c.get("budget_description", "") for c in cells}
    lines = [
        "# Leaderboard",
        "",
        "<!-- generated by `python -m benchmarks.render` from benchmarks/results/*.json: do not edit by hand -->",
        "",
        "One protocol for every method: leave-one-out split (last item = test, second to last = validation), "
        "full ranking over all items, ties counted against the target, test metrics of the checkpoint with the "
        "best validation NDCG@10. Each number comes from one result JSON (linked) with its resolved config, "
        "code version, hardware, wall time and peak memory. Paper numbers come from `benchmarks/papers.yaml`; "
        "the relative difference is (ours - paper) / paper.",
        "",
        "Reproduce a row: `python -m benchmarks.run methods=METHOD datasets=DATASET budget=BUDGET` "
        "(then `python -m benchmarks.render`).",
        "",
        "Budgets in this table:",
        "",
    ]
    lines += [f"- **{name}**: {desc}" for name, desc in sorted(budgets.items())] or ["- (no runs yet)"]
    lines += [
        "",
        "Timings were measured on shared machines: the Hardware column gives the 1-minute load average at the "
        "start and end of each run, and wall times taken under different load are not comparable. "
        "Training shows the epochs run out of the budget's maximum (a run stops earlier on its wall-time cap "
        "or on early stopping).",
        "",
        f"{STALE_MARK} marks a stale cell: its recipe, its budget or the recipe of a stage it trains first (the "
        "SASRec retriever of Laser and PALR) changed after it ran, so it holds the numbers of an earlier "
        "recipe until `python -m benchmarks.run` runs it again.",
        "",
        "## Overview: NDCG@10",
        "",
        *overview_table(datasets, cells, papers),
    ]
    for dataset in datasets:
        dataset_cells = [c for c in cells if c["dataset"] == dataset]
        lines += ["", f"## {papers.dataset_titles.get(dataset, dataset)} (`{dataset}`)", ""]
        if dataset in plots:
            lines += [f"![{dataset}]({os.path.relpath(plots[dataset], base)})", ""]
        if not dataset_cells and not any(r.dataset == dataset for r in papers.rows):
            lines.append("No runs yet.")
            continue
        lines += dataset_table(dataset, dataset_cells, papers, base)
    kar = next((p for p, _ in others if p.name == "kar_ml100k.json"), None)
    if ctr_cells or kar is not None:
        lines += [
            "",
            "## CTR models",
            "",
            "Click-through-rate models (the `ctr` family) on the CTR view of a rated "
            "corpus: label = rating > `data.ctr_threshold`, leave-one-out per user; AUC and LogLoss on test.",
            "",
        ]
        for dataset in sorted({c["dataset"] for c in ctr_cells}):
            lines += [f"### {papers.dataset_titles.get(dataset, dataset)} (`{dataset}`)", ""]
            lines += ctr_table(dataset, [c for c in ctr_cells if c["dataset"] == dataset], base) + [""]
        if kar is not None:
            lines += kar_table(json.loads(kar.read_text()), os.path.relpath(kar, base)) + [""]
    if others:
        lines += ["", "## Other benchmarks", "", "Result files not part of the grid, listed as they are:", ""]
        lines += [f"- [{p.name}]({os.path.relpath(p, base)})" + (f" ({note})" if note else "") for p, note in others]
    return "\n".join(lines) + "\n"


def plot_dataset(dataset: str, title: str, cells: list[dict], papers: Papers, path: Path) -> Path:
    """One panel per metric: a bar per (method, budget) of ours, the paper's number as a black tick on it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    cells = _sorted_cells(cells)[::-1]  # best at the top of a horizontal bar chart
    ran = {c["method"] for c in cells}
    paper_only = [r for r in papers.rows if r.dataset == dataset and r.method not in ran]
    labels = [f"{p.method} (paper only)" for p in paper_only] + [f"{c['method']} [{c['budget']}]" for c in cells]
    # per row: our value (None for paper-only rows) and the paper's (None when unpublished)
    rows = [(None, p) for p in paper_only] + [(c, papers.find(c["method"], dataset)) for c in cells]
    palette = plt.get_cmap("tab10")
    methods = sorted(ran)
    fig, axes = plt.subplots(2, 2, figsize=(11, 2.0 + 0.9 * max(len(labels), 2)), sharey=True)
    for ax, metric in zip(axes.flat, METRICS):
        ours = [_metric(c, metric) if c else None for c, _ in rows]
        published = [p.values.get(metric) if p else None for _, p in rows]
        top = max([v for v in ours + published if v is not None] + [1e-4])
        for y, (cell, ours_v, paper_v) in enumerate(zip((c for c, _ in rows), ours, published)):
            if ours_v is not None:
                ax.barh(y, ours_v, color=palette(methods.index(cell["method"]) % 10), height=0.7)
            if paper_v is not None:
                ax.plot([paper_v, paper_v], [y - 0.45, y + 0.45], color="black", linewidth=2.5)
            parts = ([f"{ours_v:.4f}"] if ours_v is not None else []) + (
                [f"paper {paper_v:.4f}"] if paper_v is not None else []
            )
            text = ", ".join(parts)
            ax.text(max(ours_v or 0.0, paper_v or 0.0) + 0.02 * top, y, text, va="center", fontsize=8)
        ax.set_xlim(0, top * (1.7 if any(published) else 1.3))
        ax.set_title(METRIC_TITLES[metric])
        ax.grid(axis="x", alpha=0.3)
        ax.set_yticks(range(len(labels)), labels)
    handles = [Line2D([], [], color="black", linewidth=2.5, label="paper (benchmarks/papers.yaml)")]
    fig.legend(handles=handles, loc="upper right", fontsize=9, frameon=False)
    fig.suptitle(f"{title}: test metrics, full ranking (bars = ours, black line = paper)", x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def render(results_dir: Path, out: Path, plots_dir: Path, papers_path: Path, stale: bool = True) -> Path:
    """Write the leaderboard markdown and one plot per dataset that has results; returns the markdown path.
    ``stale``: mark the cells that today's recipes and budgets would re-run (``mark_stale``)."""
    papers = load_papers(papers_path)
    cells, others = load_results(results_dir)
    if stale:
        mark_stale(cells)
    plots = {}
    for dataset in _dataset_order(cells, papers):
        dataset_cells = [c for c in cells if c["dataset"] == dataset and family(c) != "ctr"]
        if dataset_cells:
            title = papers.dataset_titles.get(dataset, dataset)
            plots[dataset] = plot_dataset(dataset, title, dataset_cells, papers, plots_dir / f"{dataset}.png")
    write_text_atomic(out, render_markdown(cells, others, papers, out, plots))
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    settings = {
        "results_dir": BENCH_DIR / "results",
        "out": BENCH_DIR / "LEADERBOARD.md",
        "plots_dir": BENCH_DIR / "plots",
        "papers": PAPERS_PATH,
        "claims": CLAIMS_PATH,
        "claims_out": CLAIMS_MD,
    }
    try:
        settings = {key: Path(value) for key, value in key_values(argv, settings).items()}
        out = render(settings["results_dir"], settings["out"], settings["plots_dir"], settings["papers"])
        ledger = render_claims(settings["claims"], settings["results_dir"], settings["claims_out"])
    except ZooError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    print(f"wrote {out}")
    print(f"wrote {ledger}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
