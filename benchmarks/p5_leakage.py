"""Why P5's sequential-id row is not comparable: the hit rate of the trivial rule "next item = the item whose id
follows the largest id the user has seen" under each item indexing (``zoo.data.indexing``), on each dataset.

Ids are ordered as numbers (random, sequential) or as their token tuples (collaborative: ``<CI3><CI17>`` ->
(3, 17)); "+1" is the next id in that order. The rule reads the user's whole history before the target and is
scored on the leave-one-out validation and test targets (HR@1), beside the chance rate 1 / N. ``p5_original``
is P5's own numbering (consecutive in order of appearance over the whole sequences, validation and test items
included), shown for reference; the zoo never builds it. Every index is
built from the training parts only, as the P5 recipes build it (seed 42; collaborative: 200 items per leaf, 500
on Beauty, 20 clusters, as in the ``p5_cid_*`` recipes).

    python -m benchmarks.p5_leakage [datasets=beauty,sports,toys,yelp,ml100k] [seed=42] [root=...]
    -> benchmarks/results/p5_leakage.json
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np

from benchmarks.common import cli, integer, key_values, names, write_result
from zoo.config import DataConfig
from zoo.data.indexing import INDEXINGS, build_index
from zoo.data.loading import load_corpus

DATASETS = ("beauty", "sports", "toys", "yelp", "ml100k")
TOKEN_SIZE = {"beauty": 500}


def p5_original_index(corpus) -> list[str]:
    """P5's released numbering: items numbered from 1 in order of first appearance, users in file order, over
    the whole sequences (the leak of jeykigung/P5 PR #3)."""
    number = np.zeros(corpus.num_items + 1, dtype=np.int64)
    nxt = 1
    for item in corpus.items.tolist():
        if number[item] == 0:
            number[item] = nxt
            nxt += 1
    return [""] + [str(int(n)) for n in number[1:]]


def id_order(ids: list[str]) -> np.ndarray:
    """Position of each item (1..N) in the order of its id; [N+1], entry 0 unused."""

    def key(text: str):
        codes = re.findall(r"<CI(\d+)>", text)
        return tuple(int(c) for c in codes) if codes else (int(text),)

    order = sorted(range(1, len(ids)), key=lambda i: key(ids[i]))
    position = np.zeros(len(ids), dtype=np.int64)
    position[order] = np.arange(len(order))
    return position


def rule_hits(corpus, ids: list[str]) -> dict[str, float]:
    """HR@1 of "next = the id after the largest seen id" on the validation and test targets."""
    position = id_order(ids)
    item_at = np.zeros(len(ids), dtype=np.int64)
    item_at[position[1:]] = np.arange(1, len(ids))
    out = {}
    for split, cut in (("val", 2), ("test", 1)):
        hits = total = 0
        for a, b in zip(corpus.offsets[:-1], corpus.offsets[1:]):
            if b - a < 3:
                continue
            end = b - cut
            top = int(position[corpus.items[a:end]].max())
            guess = item_at[top + 1] if top + 1 < corpus.num_items else 0
            hits += int(guess == corpus.items[end])
            total += 1
        out[f"{split}/hr@1"] = hits / max(total, 1)
        out[f"{split}/users"] = total
    return out


def _main(argv: list[str]) -> None:
    args = key_values(
        argv,
        {
            "datasets": ",".join(DATASETS),
            "seed": 42,
            "root": str(Path(__file__).resolve().parents[2] / "shared" / "datasets"),
        },
    )
    datasets = names(args, "datasets", DATASETS)
    seed = integer(args, "seed", 0)
    started = time.time()
    rows = _finished_rows(seed)  # a re-run does only the datasets not yet in the result
    for name in datasets:
        if name in rows:
            print(name, "already in the result: skipped", flush=True)
            continue
        corpus = load_corpus(DataConfig(name=name, root=args["root"]))
        row = {"num_items": corpus.num_items, "chance": 1.0 / corpus.num_items}
        for indexing in INDEXINGS:
            t = time.time()
            ids, _ = build_index(corpus, indexing, seed, TOKEN_SIZE.get(name, 200), 20)
            row[indexing] = {**rule_hits(corpus, ids), "index_s": round(time.time() - t, 2)}
            print(name, indexing, row[indexing], flush=True)
        row["p5_original"] = rule_hits(corpus, p5_original_index(corpus))
        print(name, "p5_original", row["p5_original"], flush=True)
        rows[name] = row
        missing = [d for d in DATASETS if d not in rows]
        payload = {
            "rule": "next item = the id after the largest id seen",
            "seed": seed,
            "complete": not missing,
            "missing_datasets": missing,
            "results": rows,
        }
        print(write_result("p5_leakage", payload, started), flush=True)  # each dataset recorded as it finishes


def _finished_rows(seed: int) -> dict:
    """The datasets of an earlier run of the same seed (its result file), so an interrupted run resumes."""
    from benchmarks.common import RESULTS_DIR

    path = RESULTS_DIR / "p5_leakage.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return dict(record.get("results") or {}) if record.get("seed") == seed and "complete" in record else {}


def main(argv: list[str] | None = None) -> int:
    return cli(_main, __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
