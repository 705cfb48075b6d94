"""zoo.metrics against RecBole 1.2.1's own evaluator on the same score matrices.

RecBole does not import under numpy 2, so this script has two sides:

* main env (``python -m benchmarks.peers.recbole_metrics`` from the repository root, the package installed; it
  takes no arguments): builds random score matrices, computes zoo.metrics, saves them to an .npz, runs this file
  by path with the RecBole venv's python (``--recbole IN OUT``), compares, and writes
  ``benchmarks/results/peer_recbole_metrics.json``.
* RecBole venv (``--recbole IN OUT``, internal; that venv has no zoo, so this side imports only numpy, torch and
  recbole and reads its two paths without ``benchmarks.common``): feeds the matrices to
  ``recbole.evaluator.Collector.eval_batch_collect`` in user batches exactly as RecBole's trainer does in
  full-sort evaluation (padding column and history items set to -inf first, as ``Trainer._full_sort_batch_eval``
  does), then ``recbole.evaluator.Evaluator`` computes Recall, Hit, NDCG, MRR, Precision@K and, from a users x
  items matrix with several positives, GAUC; AUC and LogLoss come from ``Collector.eval_collect`` on (prediction,
  label) pairs.

Cases: tie-free matrices (per-row permutations, so ``torch.topk`` order is unambiguous) of several sizes, with and
without seen-item masking -- these must agree to 1e-6 -- and matrices with ties (few score levels, a
popularity-like score shared by all users). On ties RecBole takes ``torch.topk``'s order, which may put the target
before the items tied with it; zoo counts tied items ahead of the target (pessimistic). So on tied matrices zoo is
a lower bound of RecBole, and RecBole is at most the optimistic (ties-favour-the-target) value; the JSON records
both bounds and the gap instead of equality.

One semantic difference is not exercised: RecBole masks every history item, the target included when the user had
consumed it before (a repeat can never hit); zoo never masks the target. The masked cases draw histories without
the target, where the two agree.

Build the venv with ``bash benchmarks/peers/setup_recbole_env.sh``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

KS = [1, 5, 10, 20, 50]
RANKING = ["recall", "hit", "ndcg", "mrr", "precision"]
REPO = Path(__file__).resolve().parents[2]
VENV_PYTHON = REPO / "benchmarks" / ".cache" / "recbole-venv" / "bin" / "python"
# (name, users, items, kind): kind "distinct" = tie-free, "masked" = tie-free with 10 seen items masked,
# "levels<L>" = integer scores in 0..L-1, "popularity" = one score per item shared by every user.
RANKING_CASES = [
    ("distinct_100x60", 100, 60, "distinct"),
    ("distinct_1000x1000", 1000, 1000, "distinct"),
    ("distinct_3000x5000", 3000, 5000, "distinct"),
    ("masked_1000x1000", 1000, 1000, "masked"),
    ("masked_3000x5000", 3000, 5000, "masked"),
    ("ties_levels3_1000x500", 1000, 500, "levels3"),
    ("ties_levels50_2000x2000", 2000, 2000, "levels50"),
    ("ties_popularity_2000x2000", 2000, 2000, "popularity"),
]
GAUC_CASES = [("gauc_distinct_500x300", 500, 300, False), ("gauc_ties_500x300", 500, 300, True)]
CTR_CASES = [("ctr_distinct_20000", 20000, False), ("ctr_ties_20000", 20000, True)]
BATCH = 512


# -- main-env side ----------------------------------------------------------------------------------------------


def build_cases(seed: int = 0) -> dict[str, np.ndarray]:
    """Score matrices (column 0 = padding, arbitrary values there), targets, histories, CTR pairs."""
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for name, users, items, kind in RANKING_CASES:
        if kind in ("distinct", "masked"):
            scores = np.argsort(rng.random((users, items + 1)), axis=1).astype(np.float64) / (items + 1)
        elif kind.startswith("levels"):
            scores = rng.integers(0, int(kind[len("levels") :]), (users, items + 1)).astype(np.float64)
        else:
            popularity = rng.poisson(30.0, items + 1).astype(np.float64)  # counts: many ties
            scores = np.repeat(popularity[None], users, axis=0)
        # Targets near the top (geometric rank in a random tie order) so that every K sees hits and misses.
        order = np.lexsort((rng.random((users, items)), -scores[:, 1:]), axis=1) + 1
        depth = np.minimum(rng.geometric(0.04, users) - 1, items - 1)
        targets = order[np.arange(users), depth]
        arrays[f"{name}/scores"] = scores
        arrays[f"{name}/targets"] = targets
        if kind == "masked":
            history = np.stack([rng.choice(np.setdiff1d(np.arange(1, items + 1), [t]), 10, False) for t in targets])
            arrays[f"{name}/history"] = history
    for name, users, items, ties in GAUC_CASES:
        scores = rng.integers(0, 4, (users, items + 1)).astype(np.float64) if ties else rng.random((users, items + 1))
        labels = (rng.random((users, items + 1)) < rng.uniform(0, 0.1, (users, 1))).astype(np.int64)
        labels[:, 0] = 0
        labels[:5, 1:] = 0  # users without a positive are skipped by both
        arrays[f"{name}/scores"] = scores
        arrays[f"{name}/labels"] = labels
    for name, n, ties in CTR_CASES:
        preds = rng.uniform(0.001, 0.999, n)
        preds = np.round(preds, 2) if ties else preds
        arrays[f"{name}/preds"] = preds
        arrays[f"{name}/labels"] = (rng.random(n) < preds).astype(np.int64)
    return arrays


def zoo_results(arrays: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """zoo.metrics on every case; for tie cases also the optimistic bound (ties counted for the target)."""
    from zoo.metrics import auc, gauc, log_loss, metrics_from_ranks, target_ranks

    out: dict[str, dict[str, float]] = {}
    for name, _, _, _ in RANKING_CASES:
        scores = torch.from_numpy(arrays[f"{name}/scores"])
        targets = torch.from_numpy(arrays[f"{name}/targets"])
        history = arrays.get(f"{name}/history")
        seen = None if history is None else torch.from_numpy(history)
        out[name] = _recbole_names(metrics_from_ranks(target_ranks(scores, targets, seen), KS))
        # optimistic bound: only strictly better items ahead (not a zoo rule; the other end of the tie interval)
        strictly = scores > scores.gather(1, targets.view(-1, 1))
        strictly[:, 0] = False
        out[name + "/optimistic"] = _recbole_names(metrics_from_ranks(strictly.sum(1), KS))
    for name, _, _, _ in GAUC_CASES:
        scores, labels = arrays[f"{name}/scores"][:, 1:], arrays[f"{name}/labels"][:, 1:]
        users = np.repeat(np.arange(len(scores))[:, None], scores.shape[1], axis=1)
        value = gauc(torch.from_numpy(scores), torch.from_numpy(labels), torch.from_numpy(users), "positives")
        out[name] = {"gauc": value}
    for name, _, _ in CTR_CASES:
        preds, labels = torch.from_numpy(arrays[f"{name}/preds"]), torch.from_numpy(arrays[f"{name}/labels"])
        out[name] = {"auc": auc(preds, labels), "logloss": log_loss(preds, labels)}
    return out


def _recbole_names(metrics: dict[str, float]) -> dict[str, float]:
    """zoo keys -> RecBole keys (zoo's hr@K is RecBole's hit@K)."""
    return {key.replace("hr@", "hit@"): value for key, value in metrics.items()}


def compare(zoo: dict[str, dict[str, float]], recbole: dict[str, dict[str, float]]) -> dict:
    """Max |zoo - RecBole| per metric over the tie-free cases; bounds and gaps on the tie cases."""
    exact_cases = [c[0] for c in RANKING_CASES if c[3] in ("distinct", "masked")]
    tie_cases = [c[0] for c in RANKING_CASES if c[3] not in ("distinct", "masked")]
    per_metric: dict[str, float] = {}
    per_case: dict[str, dict] = {}
    for name in exact_cases:
        diffs = {k: abs(zoo[name][k] - recbole[name][k]) for k in recbole[name]}
        per_case[name] = {"max_abs_diff": max(diffs.values()), "recbole": recbole[name], "zoo": zoo[name]}
        for key, diff in diffs.items():
            metric = key.split("@")[0]
            per_metric[metric] = max(per_metric.get(metric, 0.0), diff)
    for name in [c[0] for c in GAUC_CASES] + [c[0] for c in CTR_CASES]:
        diffs = {k: abs(zoo[name][k] - recbole[name][k]) for k in recbole[name]}
        per_case[name] = {"max_abs_diff": max(diffs.values()), "recbole": recbole[name], "zoo": zoo[name]}
        for key, diff in diffs.items():
            per_metric[key] = max(per_metric.get(key, 0.0), diff)
    ties: dict[str, dict] = {}
    for name in tie_cases:
        low, high, theirs = zoo[name], zoo[name + "/optimistic"], recbole[name]
        ties[name] = {
            "zoo_le_recbole": all(low[k] <= theirs[k] + 1e-9 for k in theirs),
            "recbole_le_optimistic": all(theirs[k] <= high[k] + 1e-9 for k in theirs),
            "max_recbole_minus_zoo": max(theirs[k] - low[k] for k in theirs),
            "ndcg@10": {"zoo": low["ndcg@10"], "recbole": theirs["ndcg@10"], "optimistic": high["ndcg@10"]},
            "recall@10": {"zoo": low["recall@10"], "recbole": theirs["recall@10"], "optimistic": high["recall@10"]},
        }
    return {"max_abs_diff_tie_free": per_metric, "cases": per_case, "tie_cases": ties}


def main(argv: list[str] | None = None) -> int:
    from benchmarks.common import cli

    return cli(_main, __doc__, argv)


def _main(argv: list[str]) -> None:
    from benchmarks.common import key_values, write_result

    key_values(argv, {})  # no arguments
    started = time.time()
    if not VENV_PYTHON.exists():
        sys.exit(f"RecBole venv missing at {VENV_PYTHON}; build it with: bash benchmarks/peers/setup_recbole_env.sh")
    arrays = build_cases()
    zoo = zoo_results(arrays)
    with tempfile.TemporaryDirectory() as tmp:
        cases_path, out_path = Path(tmp) / "cases.npz", Path(tmp) / "recbole.json"
        np.savez(cases_path, **arrays)
        subprocess.run([str(VENV_PYTHON), __file__, "--recbole", str(cases_path), str(out_path)], check=True)
        recbole = json.loads(out_path.read_text())
    report = compare(zoo, recbole["results"])
    worst = max(report["max_abs_diff_tie_free"].values())
    ties_ok = all(t["zoo_le_recbole"] and t["recbole_le_optimistic"] for t in report["tie_cases"].values())
    payload = {
        "peer": "recbole.evaluator Collector + Evaluator in a separate numpy<2 venv",
        "peer_versions": recbole["versions"],
        "ks": KS,
        "tolerance": 1e-6,
        "passed": worst <= 1e-6 and ties_ok,
        "max_abs_diff_overall": worst,
        **report,
        "tie_rule": (
            "zoo counts every item tied with the target as ranked ahead of it (pessimistic); RecBole orders ties "
            "by torch.topk, which can put the target first. On tied matrices zoo <= RecBole <= optimistic bound."
        ),
        "recbole_decimal_place": 12,
    }
    path = write_result("peer_recbole_metrics", payload, started)
    print(f"max |zoo - recbole| on tie-free cases: {worst:.3g}; tie cases bounded: {ties_ok}; wrote {path}")
    if not payload["passed"]:
        sys.exit(1)


# -- RecBole-venv side ------------------------------------------------------------------------------------------


def recbole_side(cases_path: str, out_path: str) -> None:
    """Compute RecBole's metrics with its own Collector and Evaluator (runs in the RecBole venv)."""
    from recbole.config.configurator import Config

    Config.compatibility_settings(None)  # RecBole's own shim (np.float etc.), normally applied by Config()
    from recbole.evaluator import Collector, Evaluator

    data = np.load(cases_path)
    base = {"topk": KS, "metric_decimal_place": 12, "eval_args": {"mode": "full"}, "device": "cpu"}
    out: dict[str, dict[str, float]] = {}
    ranking_config = {**base, "metrics": ["Recall", "Hit", "NDCG", "MRR", "Precision"]}
    for name, _, _, _ in RANKING_CASES:
        scores = torch.from_numpy(data[f"{name}/scores"]).clone()
        targets = torch.from_numpy(data[f"{name}/targets"])
        scores[:, 0] = -np.inf  # RecBole's full-sort evaluation: padding item
        if f"{name}/history" in data:
            history = torch.from_numpy(data[f"{name}/history"])
            rows = torch.arange(len(scores)).view(-1, 1).expand_as(history)
            scores[rows.reshape(-1), history.reshape(-1)] = -np.inf  # RecBole masks history items with -inf
        out[name] = _collect_and_evaluate(ranking_config, Collector, Evaluator, scores, targets)
    gauc_config = {**base, "metrics": ["GAUC"]}
    for name, _, _, _ in GAUC_CASES:
        scores = torch.from_numpy(data[f"{name}/scores"]).clone()
        scores[:, 0] = -np.inf
        labels = torch.from_numpy(data[f"{name}/labels"])
        positive_u, positive_i = torch.nonzero(labels, as_tuple=True)
        collector = Collector(gauc_config)
        collector.eval_batch_collect(scores, None, positive_u, positive_i)
        out[name] = dict(Evaluator(gauc_config).evaluate(collector.get_data_struct()))
    ctr_config = {**base, "metrics": ["AUC", "LogLoss"], "eval_args": {"mode": "labeled"}, "LABEL_FIELD": "label"}
    for name, _, _ in CTR_CASES:
        collector = Collector(ctr_config)
        collector.eval_collect(torch.from_numpy(data[f"{name}/preds"]), torch.from_numpy(data[f"{name}/labels"]))
        out[name] = dict(Evaluator(ctr_config).evaluate(collector.get_data_struct()))
    import recbole

    results = {case: {k: float(v) for k, v in values.items()} for case, values in out.items()}
    versions = {"recbole": recbole.__version__, "numpy": np.__version__, "torch": torch.__version__}
    Path(out_path).write_text(json.dumps({"versions": versions, "results": results}))


def _collect_and_evaluate(config, collector_cls, evaluator_cls, scores, targets) -> dict[str, float]:
    """RecBole's trainer loop in miniature: one eval_batch_collect per user batch, then one evaluate."""
    collector = collector_cls(config)
    for start in range(0, len(scores), BATCH):
        batch_scores = scores[start : start + BATCH]
        positive_u = torch.arange(len(batch_scores))
        collector.eval_batch_collect(batch_scores, None, positive_u, targets[start : start + BATCH])
    return dict(evaluator_cls(config).evaluate(collector.get_data_struct()))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--recbole"] and len(sys.argv) == 4:  # inside the RecBole venv (no zoo there)
        recbole_side(sys.argv[2], sys.argv[3])
    else:
        sys.exit(main())
