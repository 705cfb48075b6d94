"""UEM's task 2 (the paper's personalisation task) on MovieLens-100K: a user's preferred genres from the rating
history, UEM (``uem_genres_ml100k``: up to ``history`` items as K soft prompts) against the text-prompt baseline
(the same recipe with ``model.history=text``: the most recent items written out, title, genres and rating, up to
``max_prompt_tokens``), with the same tiny LM, seed, users and batch size, at equal epochs or equal wall time (each
arm's wall time and epochs are reported beside it). Both go through ``zoo.run``: validation F1 picks the best epoch, the
test users (10%, never trained on) are scored with it.

The label (``zoo.models.uem.genre_examples``): the genres held by at least half of the top-rated items among the
last 10 items of the training part s[:n-2]; the input is every item before them; the validation and test items of
the ranking protocol are never read. A no-learning reference is reported too: the ``top_j`` most frequent genres of
the input history (j = 1, 2, 3) on the same test users.

    python -m benchmarks.uem_genres [epochs=3 | minutes=M [patience=5]] [history=200] [max_prompt_tokens=512]
        [tokens=queries] [prior=0 [offsets=]] [threads=1] [seed=42] [resamples=2000] [name=uem_genres]

``tokens=`` is UEM's ``model.tokens``: ``queries`` (the recipe's K resampled soft prompts) or ``per_item`` (one
soft prompt per history item, so the LM attends to each item's vector). ``prior=W`` (W > 0) gives UEM's module
its genre head (``model.align_weight=1``, a multi-label BCE read-out of the mean soft prompt, trained with the LM)
and decodes with ``eval.prior_weight=W`` (the head's log-odds of each genre added to the answer's score); the UEM
arm's checkpoint is then also re-predicted with the LM alone (weight 0) and the head alone (a weight of 1e4).
``offsets=O1,O2,...`` (with ``prior``) also tunes the decision on the validation users (the ones that picked the
checkpoint): the weight W or 1e4, and the offset added to the head's log-odds (``eval.prior_offset``, a shift of
its p > 0.5 threshold) of the best validation F1; the arm ``uem_tuned`` is the same checkpoint tested with them.

``epochs=`` gives both arms the same epochs (equal examples seen); ``minutes=`` gives both the same training wall
time instead (equal compute at the same thread count: the cheaper arm sees more examples), validation F1 picking
the epoch with early stopping after ``patience`` epochs without a gain (0: none). The difference of the sample F1
gets a paired bootstrap interval over the test users (the best checkpoint of each arm re-predicts them).

Writes ``benchmarks/results/<name>.json`` (default ``uem_genres``).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import cli, integer, key_values, number, numbers, write_result
from zoo.errors import ConfigError

DOC = __doc__
HEAD_ALONE = 1e4  # a prior weight at which the genre head decides and the LM only breaks its ties
KEYS = ("f1", "micro_f1", "macro_f1", "precision", "recall", "exact_match", "pred_size")


def frequency_reference(datamodule) -> dict:
    """The input history's j most frequent genres as the prediction, on the test users."""
    from zoo.metrics.multilabel import multilabel_metrics
    from zoo.models.uem import item_genres

    corpus, names = datamodule.corpus, datamodule.genre_names
    table = item_genres(corpus, names)
    ex = datamodule.examples("test")
    out = {}
    for j in (1, 2, 3):
        preds = np.zeros(ex.labels.shape, dtype=bool)
        for row, (start, end) in enumerate(zip(ex.start, ex.end)):
            counts = table[corpus.items[max(start, end - int(datamodule.max_len)) : end]].sum(0)
            preds[row, np.argsort(-counts, kind="stable")[:j]] = True
        metrics = multilabel_metrics(torch.from_numpy(preds), torch.from_numpy(ex.labels))
        out[f"top_{j}"] = {f"test/{k}": round(metrics[k], 4) for k in KEYS}
    return out


def test_predictions(
    overrides: list[str], run_dir: Path, corpus=None, split: str = "test"
) -> tuple[np.ndarray, np.ndarray]:
    """The best checkpoint's predicted genre sets on the ``split`` users (test by default) and their labels ([N, G]
    bool each), the loop's own batches (the per-user F1 that the paired bootstrap resamples). ``corpus``: tests."""
    from zoo.build import build
    from zoo.config import compose
    from zoo.run import read_checkpoint

    model, datamodule = build(compose("uem_genres_ml100k", overrides), corpus=corpus)
    ckpt = read_checkpoint(str(run_dir / "checkpoints" / "best.ckpt"), model)
    model.on_load_checkpoint(ckpt)
    model.load_state_dict(ckpt["state_dict"], strict=False)
    model.eval()
    loader = datamodule.test_dataloader() if split == "test" else datamodule.val_dataloader()
    preds, labels = [], []
    with torch.no_grad():
        for batch in loader:
            preds.append(model.predict_labels(batch).bool())
            labels.append(batch["labels_multi"].bool())
    return torch.cat(preds).numpy(), torch.cat(labels).numpy()


def tune_decision(common: list[str], run_dir: Path, weights: list[float], offsets: list[float], corpus=None) -> dict:
    """The (``eval.prior_weight``, ``eval.prior_offset``) of the best validation F1 for the run's best checkpoint,
    over ``weights`` x ``offsets`` (ties: the earlier pair), and every pair's validation F1."""
    from zoo.metrics.multilabel import multilabel_metrics

    scores, best = {}, None
    for weight in weights:
        for offset in offsets:
            settings = [f"eval.prior_weight={weight:g}", f"eval.prior_offset={offset:g}"]
            preds, labels = test_predictions([*common, *settings], run_dir, corpus=corpus, split="val")
            f1 = multilabel_metrics(torch.from_numpy(preds), torch.from_numpy(labels))["f1"]
            scores[f"weight {weight:g}, offset {offset:g}"] = round(f1, 4)
            if best is None or f1 > best[0]:
                best = (f1, settings)
    return {"overrides": best[1], "val_f1": scores, "best_val_f1": round(best[0], 4)}


def body(argv: list[str]) -> None:
    from benchmarks.common import bootstrap
    from benchmarks.run import epochs_run
    from zoo.build import build
    from zoo.config import compose
    from zoo.metrics.multilabel import multilabel_metrics, sample_f1
    from zoo.run import run

    settings = key_values(
        argv,
        {
            "epochs": "3",
            "minutes": "0",
            "patience": "5",
            "history": "200",
            "max_prompt_tokens": "512",
            "tokens": "queries",
            "prior": "0",
            "offsets": "",
            "threads": "1",
            "seed": "42",
            "resamples": "2000",
            "name": "uem_genres",
        },
    )
    threads = integer(settings, "threads", 1)
    torch.set_num_threads(threads)
    epochs, history = integer(settings, "epochs", 1), integer(settings, "history", 1)
    minutes, patience = integer(settings, "minutes", 0), integer(settings, "patience", 0)
    max_prompt, seed = integer(settings, "max_prompt_tokens", 16), integer(settings, "seed")
    resamples = integer(settings, "resamples", 100)
    prior = number(settings, "prior", 0.0)
    offsets = numbers(settings, "offsets")
    if offsets and not prior:
        raise ConfigError("offsets= tunes the genre head's decision: it needs prior=W > 0")
    if settings["tokens"] not in ("queries", "per_item"):
        raise ConfigError(f"tokens must be queries or per_item, got '{settings['tokens']}'")
    if minutes:  # equal wall time at the same threads: each arm trains as many epochs as its minutes allow
        budget = [
            f"trainer.max_time=00:{minutes // 60:02d}:{minutes % 60:02d}:00",
            "trainer.max_epochs=1000",
            f"trainer.early_stopping_patience={patience}",
        ]
        compute = f"equal training wall time: {minutes} minutes an arm at {threads} thread(s), validation F1 picks"
        compute += f" the epoch (early stopping patience {patience})" if patience else " the epoch"
    else:  # equal examples seen
        budget = [f"trainer.max_epochs={epochs}", "trainer.early_stopping_patience=0"]
        compute = f"equal examples seen: {epochs} epochs an arm"
    started = time.time()
    arms, f1s = {}, {}
    with tempfile.TemporaryDirectory() as root:
        for arm in ("soft", "text"):
            key = "uem" if arm == "soft" else "text_prompt"
            common = [
                f"model.history={arm}",
                f"data.max_len={history}",
                f"model.max_prompt_tokens={max_prompt}",
                f"seed={seed}",
            ]
            if arm == "soft":
                common.append(f"model.tokens={settings['tokens']}")
                if prior:
                    common += ["model.align_weight=1", f"eval.prior_weight={prior:g}"]
            run_dir = Path(root) / arm
            overrides = [*common, *budget, "trainer.enable_progress_bar=false", f"run_dir={run_dir}"]
            t0 = time.time()
            metrics = run(compose("uem_genres_ml100k", overrides))
            wall = round(time.time() - t0, 1)
            preds, labels = test_predictions(common, run_dir)
            f1s[key] = sample_f1(torch.from_numpy(preds), torch.from_numpy(labels)).numpy()
            if abs(float(f1s[key].mean()) - metrics["test/f1"]) > 1e-6:
                raise RuntimeError(
                    f"{key}: per-user F1 {f1s[key].mean():.6f} != the run's test F1 {metrics['test/f1']}"
                )
            arms[key] = {
                "overrides": overrides[:-1],
                **{f"test/{k}": round(metrics[f"test/{k}"], 4) for k in KEYS},
                "best/val_f1": round(metrics.get("best/val/f1", float("nan")), 4),
                "training": epochs_run(run_dir),
                "distinct_answers": int(len({tuple(row) for row in preds.tolist()})),
                "wall_s": wall,
            }
            if arm == "soft" and prior and offsets:  # the decision tuned on the validation users, then tested
                tuned = tune_decision(common, run_dir, [prior, HEAD_ALONE], offsets)
                preds, _ = test_predictions([*common, *tuned["overrides"]], run_dir)
                f1s["uem_tuned"] = sample_f1(torch.from_numpy(preds), torch.from_numpy(labels)).numpy()
                scored = multilabel_metrics(torch.from_numpy(preds), torch.from_numpy(labels))
                arms["uem_tuned"] = {
                    **tuned,
                    **{f"test/{k}": round(scored[k], 4) for k in KEYS},
                    "distinct_answers": int(len({tuple(row) for row in preds.tolist()})),
                }
            if arm == "soft" and prior:  # the same checkpoint's LM alone and genre head alone
                for label, weight in (("lm_alone", 0.0), ("head_alone", HEAD_ALONE)):
                    alone, _ = test_predictions([*common, f"eval.prior_weight={weight:g}"], run_dir)
                    scored = multilabel_metrics(torch.from_numpy(alone), torch.from_numpy(labels))
                    arms[key][label] = {
                        **{f"test/{k}": round(scored[k], 4) for k in KEYS},
                        "distinct_answers": int(len({tuple(row) for row in alone.tolist()})),
                    }
            print(arm, arms[key], flush=True)
        _, datamodule = build(compose("uem_genres_ml100k", [f"data.max_len={history}", "model.history=text"]))
        reference = frequency_reference(datamodule)
        sizes = {s: len(datamodule.examples(s)) for s in ("train", "val", "test")}
    paired = bootstrap(f1s, resamples, seed=0, reference="text_prompt", metric="f1")
    delta = round(arms["uem"]["test/f1"] - arms["text_prompt"]["test/f1"], 4)
    write_result(
        settings["name"],
        {
            "what": "preferred-genre prediction on ml100k: UEM soft prompts vs the text-history prompt, same tiny LM",
            "settings": {
                "compute": compute,
                "epochs": None if minutes else epochs,
                "minutes": minutes or None,
                "history_items": history,
                "uem_tokens": settings["tokens"],
                "uem_genre_head_prior_weight": prior or None,
                "text_max_prompt_tokens": max_prompt,
                "batch": 16,
                "threads": threads,
                "seed": seed,
                "backbone": "tiny-llama (2 layers, hidden 64, from scratch)",
                "users": sizes,
                "label": "genres held by >= 50% of the top-rated items among the last 10 items of s[:n-2]",
                "metric": "f1 = sample-averaged F1 (headline); micro / macro F1 beside it",
                "interval": f"paired bootstrap over the test users, {resamples} resamples",
            },
            "arms": arms,
            "f1_uem_minus_text": delta,
            "f1_uem_tuned_minus_text": (
                round(arms["uem_tuned"]["test/f1"] - arms["text_prompt"]["test/f1"], 4) if "uem_tuned" in arms else None
            ),
            "paired_bootstrap": paired,
            "history_frequency_reference": reference,
            "paper_claim": "up to +0.21 / +0.25 F1 over text-prompt baselines (arXiv 2401.04858, abstract)",
        },
        started,
    )


if __name__ == "__main__":
    sys.exit(cli(body, DOC))
