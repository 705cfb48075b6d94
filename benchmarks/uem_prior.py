"""UEM's LM and its module's own ranking as one product of experts: each title's beam score plus a weight times the
alignment term's log-probability of the item (``eval.prior_weight``, added step by step along the title trie as a
lookahead, see ``zoo.modules.beam_search``). The weight is chosen on **tuning users**: validation users that the
run did not select its checkpoint on (those after its first ``trainer.limit_val_batches`` batches, at most
``tune_users``; the first ones would favour the weight the checkpoint was selected at), the best of every weight
tuned so far (a later call adds weights), and most-popular's NDCG@10 on the same users is recorded beside them
(``tuning_most_popular_ndcg@10``). Then the run's best
checkpoint is tested on every test user with it, beside the LM alone (weight 0) and the module alone (a weight so
large that the LM only breaks ties). A weight the run itself was tested at (its ``eval.prior_weight``) is read from
its metrics.json instead of being tested again.

    python -m benchmarks.uem_prior runs=RUN_DIR[,RUN_DIR...] [weights=0,0.5,1,2,4,8] [tune_users=1024]
        [tests=lm_alone,chosen,module_alone] [threads=1] [name=uem_prior]

``tests=`` names what is tested on every test user (an empty list only tunes); ``chosen_paired`` is the chosen
weight again with every test user's rank kept (the run's test_ranks.npz) and a paired bootstrap interval of its
NDCG@10 against most-popular's on the same users. ``runs`` are finished ``uem`` runs
trained with the alignment term (``model.align_weight > 0``; the ``align*`` and
``per_item_align*`` arms of ``benchmarks.uem_alignment``); evaluating never rewrites them. The JSON
(``benchmarks/results/<name>.json``) is keyed by run directory and rewritten after every evaluation, so an
interrupted call resumes where it stopped.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import common
from benchmarks.common import cli, integer, key_values, names, write_result
from zoo.errors import ConfigError

MODULE_ALONE = 1e4  # a prior weight at which the module's ranking decides and the LM only breaks its ties
# what is tested: name -> prior weight (None: the chosen one; chosen_paired also keeps every test user's rank)
TESTS = {"lm_alone": 0.0, "chosen": None, "module_alone": MODULE_ALONE, "chosen_paired": None}
RESAMPLES = 2000


def tuning_loader(cfg, datamodule, users: int):
    """The validation examples the run did not select its checkpoint on (those after its first
    ``trainer.limit_val_batches`` batches), at most ``users`` of them, as a loader of whole batches."""
    from torch.utils.data import DataLoader

    dataset = datamodule.batch_dataset("val", train=False)
    size = int(cfg.data.eval_batch_size)
    limit = cfg.trainer.limit_val_batches
    if limit is None or float(limit) < 1 or float(limit) != int(float(limit)):
        raise ConfigError(f"{cfg.recipe}: trainer.limit_val_batches={limit}; the tuning users need a whole number")
    first = int(limit) * size
    rows = list(range(first, min(first + users, len(dataset))))
    if not rows:
        raise ConfigError(f"no validation user after the first {first} (the checkpoint's) is left for tuning")
    batches = [rows[i : i + size] for i in range(0, len(rows), size)]
    return DataLoader(dataset, sampler=batches, batch_size=None), len(rows)


def tuning_targets(cfg, datamodule, users: int) -> np.ndarray:
    """The validation targets of the tuning users (``tuning_loader``'s rows, in order)."""
    first = int(float(cfg.trainer.limit_val_batches)) * int(cfg.data.eval_batch_size)
    return np.asarray(datamodule.examples("val").target[first : first + users])


def popular_ranks(counts: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Most-popular's 0-based rank of each of ``targets`` by item ``counts`` ([N+1], 0 = padding): the number of
    other items counted at least as often (ties count against it, as for every method)."""
    real = np.sort(np.asarray(counts)[1:])
    return len(real) - np.searchsorted(real, np.asarray(counts)[targets], side="left") - 1


def popular_ndcg(counts: np.ndarray, targets: np.ndarray) -> float:
    """Most-popular's NDCG@10 for ``targets`` by item ``counts`` (``popular_ranks``)."""
    return float(common.ndcg_at(popular_ranks(counts, targets), 10).mean())


def run_datamodule(run_dir: Path):
    """The run's resolved config and its DataModule (for its item counts and examples)."""
    from zoo.build import build
    from zoo.run import compose_resume

    cfg = compose_resume(str(run_dir), None, ["train=false", "eval.prior_weight=0"])
    return cfg, build(cfg)[1]


def popular_reference(run_dir: Path, users: int) -> float:
    """Most-popular's NDCG@10 on the run's tuning users: counts of the histories before the validation targets."""
    cfg, datamodule = run_datamodule(run_dir)
    return popular_ndcg(datamodule.train_item_counts("val"), tuning_targets(cfg, datamodule, users))


def validate(run_dir: Path, weights: list[float], users: int) -> tuple[dict[str, float], int]:
    """NDCG@10 of ``run_dir``'s best checkpoint on the tuning users (``tuning_loader``) at each prior weight."""
    from zoo.build import build
    from zoo.run import compose_resume, read_checkpoint
    from zoo.trainer import build_trainer

    settings = ["train=false", "trainer.enable_progress_bar=false", f"eval.prior_weight={max(weights + [1.0])}"]
    cfg = compose_resume(str(run_dir), None, settings)
    model, datamodule = build(cfg)
    best = str(run_dir / "checkpoints" / "best.ckpt")
    read_checkpoint(best, model)  # a clear line for a truncated file
    datamodule.trainer = None
    loader, count = tuning_loader(cfg, datamodule, users)
    cfg.trainer.limit_val_batches = None
    out = {}
    for weight in weights:
        cfg.eval.prior_weight = float(weight)  # read at every decoding call
        trainer = build_trainer(cfg, model, run_dir, loggers=False)
        trainer.validate(model, dataloaders=loader, ckpt_path=best, verbose=False)
        out[str(weight)] = float(trainer.callback_metrics["val/ndcg@10"])
        print(f"  tuning weight {weight}: {out[str(weight)]:.4f}", flush=True)
    return out, count


def own_test(run_dir: Path, cfg: dict, weight: float) -> dict | None:
    """The run's own test metrics (its metrics.json: the best checkpoint on every test user) when the run was
    tested at ``weight``, else None: a second test at the same weight would repeat it exactly."""
    metrics = run_dir / "metrics.json"
    evaluated = cfg.get("eval", {})
    if not metrics.is_file() or cfg.get("trainer", {}).get("limit_test_batches") is not None:
        return None
    if float(evaluated.get("prior_weight") or 0.0) != float(weight):
        return None
    own = common.cutoff_metrics(json.loads(metrics.read_text()))
    return {**own, "source": "the run's own test (metrics.json)"} if own else None


def paired_test(run_dir: Path, weight: float) -> dict:
    """The test at ``weight`` with every test user's rank kept (``eval.save_ranks``: the run's test_ranks.npz), and
    a paired bootstrap of its NDCG@10 against most-popular's on the same test users (counts of the histories before
    the test targets, as the pop model ranks)."""
    metrics = common.retest(run_dir, [f"eval.prior_weight={weight}", "eval.save_ranks=true"], timed=True)
    kept = np.load(run_dir / "test_ranks.npz")
    popular = popular_ranks(run_datamodule(run_dir)[1].train_item_counts("test"), kept["target"])
    values = {"uem": common.ndcg_at(kept["rank"], 10), "most_popular": common.ndcg_at(popular, 10)}
    paired = common.bootstrap(values, RESAMPLES, seed=0, reference="most_popular")
    return {**metrics, "test_users": int(len(kept["rank"])), "paired_bootstrap": paired}


def test(run_dir: Path, weight: float) -> dict:
    return common.retest(run_dir, [f"eval.prior_weight={weight}"], timed=True)


def _main(argv: list[str]) -> None:
    defaults = {"runs": "", "weights": "0,0.5,1,2,4,8", "threads": "1", "tune_users": "1024", "name": "uem_prior"}
    args = key_values(argv, {**defaults, "tests": "lm_alone,chosen,module_alone"})
    threads = integer(args, "threads", minimum=1)
    tune_users = integer(args, "tune_users", minimum=1)
    wanted = names(args, "tests", choices=list(TESTS))
    runs = common.finished_runs(args["runs"])
    weights = sorted(set(common.numbers(args, "weights", minimum=0)))
    if not weights:
        raise ConfigError(f"weights: expected numbers >= 0, got {args['weights']!r}")
    torch.set_num_threads(threads)
    started = time.time()
    path = common.RESULTS_DIR / f"{args['name']}.json"
    found: dict = (json.loads(path.read_text()) if path.is_file() else {}).get("runs", {})

    def save() -> None:
        payload = {
            "what": "UEM's beam scores plus a weight times its alignment term's item log-probability "
            "(eval.prior_weight), the weight chosen on validation users; test on every test user",
            "module_alone_weight": MODULE_ALONE,
            "runs": found,
        }
        write_result(args["name"], payload, started, common.RESULTS_DIR)

    for run_dir in runs:
        record = found.setdefault(str(run_dir), {})
        cfg = common.run_config(run_dir)
        record.update(dataset=cfg["data"]["name"], recipe=cfg.get("recipe"), model=cfg["model"]["name"])
        val = record.setdefault("tuning_ndcg@10", {})
        missing = [w for w in weights if str(w) not in val]
        if missing:
            scores, record["tuning_users"] = validate(run_dir, missing, tune_users)
            val.update(scores)
            save()
        if "tuning_most_popular_ndcg@10" not in record:
            record["tuning_most_popular_ndcg@10"] = popular_reference(run_dir, int(record["tuning_users"]))
            save()
        # the best of every weight tuned so far (also by earlier calls); ties: the smaller weight
        chosen = max((float(w) for w in val), key=lambda w: (val[str(w)], -w))
        record["chosen_weight"] = chosen
        tests = record.setdefault("test", {})
        save()
        for label in wanted:
            weight = chosen if TESTS[label] is None else TESTS[label]
            key = f"{label} (weight {weight:g})"
            if key in tests:
                continue
            if label == "chosen_paired":
                tests[key] = paired_test(run_dir, weight)
            else:
                tests[key] = own_test(run_dir, cfg, weight) or test(run_dir, weight)
            print(run_dir.name, key, tests[key]["test/ndcg@10"], flush=True)
            save()


def main(argv: list[str] | None = None) -> int:
    return cli(_main, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
