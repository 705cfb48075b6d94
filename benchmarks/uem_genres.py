"""UEM's task 2 (the paper's personalisation task) on MovieLens-100K: a user's preferred genres from the rating
history, UEM (``uem_genres_ml100k``: up to ``history`` items as K soft prompts) against the text-prompt baseline
(the same recipe with ``model.history=text``: the most recent items written out, title, genres and rating, up to
``max_prompt_tokens``), with the same tiny LM, seed, users, epochs and batch size (equal compute in examples seen;
each arm's wall time is reported beside it). Both go through ``zoo.run``: validation F1 picks the best epoch, the
test users (10%, never trained on) are scored with it.

The label (``zoo.models.uem.genre_examples``): the genres held by at least half of the top-rated items among the
last 10 items of the training part s[:n-2]; the input is every item before them; the validation and test items of
the ranking protocol are never read. A no-learning reference is reported too: the ``top_j`` most frequent genres of
the input history (j = 1, 2, 3) on the same test users.

    python -m benchmarks.uem_genres [epochs=3] [history=200] [max_prompt_tokens=512] [threads=1] [seed=42]

Writes ``benchmarks/results/<name>.json`` (default ``uem_genres``).
"""

from __future__ import annotations

import sys
import tempfile
import time

import numpy as np
import torch

from benchmarks.common import cli, integer, key_values, write_result

DOC = __doc__
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


def body(argv: list[str]) -> None:
    from zoo.build import build
    from zoo.config import compose
    from zoo.run import run

    settings = key_values(
        argv,
        {
            "epochs": "3",
            "history": "200",
            "max_prompt_tokens": "512",
            "threads": "1",
            "seed": "42",
            "name": "uem_genres",
        },
    )
    threads = integer(settings, "threads", 1)
    torch.set_num_threads(threads)
    epochs, history = integer(settings, "epochs", 1), integer(settings, "history", 1)
    max_prompt, seed = integer(settings, "max_prompt_tokens", 16), integer(settings, "seed")
    started = time.time()
    arms = {}
    with tempfile.TemporaryDirectory() as root:
        for arm in ("soft", "text"):
            overrides = [
                f"model.history={arm}",
                f"data.max_len={history}",
                f"model.max_prompt_tokens={max_prompt}",
                f"trainer.max_epochs={epochs}",
                "trainer.early_stopping_patience=0",
                "trainer.enable_progress_bar=false",
                "logger.name=none",
                f"seed={seed}",
                f"run_root={root}",
            ]
            t0 = time.time()
            metrics = run(compose("uem_genres_ml100k", overrides))
            arms["uem" if arm == "soft" else "text_prompt"] = {
                "overrides": overrides,
                **{f"test/{k}": round(metrics[f"test/{k}"], 4) for k in KEYS},
                "best/val_f1": round(metrics.get("best/val/f1", float("nan")), 4),
                "wall_s": round(time.time() - t0, 1),
            }
            print(arm, arms["uem" if arm == "soft" else "text_prompt"], flush=True)
        _, datamodule = build(compose("uem_genres_ml100k", [f"data.max_len={history}", "model.history=text"]))
        reference = frequency_reference(datamodule)
        sizes = {s: len(datamodule.examples(s)) for s in ("train", "val", "test")}
    delta = round(arms["uem"]["test/f1"] - arms["text_prompt"]["test/f1"], 4)
    write_result(
        settings["name"],
        {
            "what": "preferred-genre prediction on ml100k: UEM soft prompts vs the text-history prompt, same tiny LM",
            "settings": {
                "epochs": epochs,
                "history_items": history,
                "text_max_prompt_tokens": max_prompt,
                "batch": 16,
                "threads": threads,
                "seed": seed,
                "backbone": "tiny-llama (2 layers, hidden 64, from scratch)",
                "users": sizes,
                "label": "genres held by >= 50% of the top-rated items among the last 10 items of s[:n-2]",
                "metric": "f1 = sample-averaged F1 (headline); micro / macro F1 beside it",
            },
            "arms": arms,
            "f1_uem_minus_text": delta,
            "history_frequency_reference": reference,
            "paper_claim": "up to +0.21 / +0.25 F1 over text-prompt baselines (arXiv 2401.04858, abstract)",
        },
        started,
    )


if __name__ == "__main__":
    sys.exit(cli(body, DOC))
