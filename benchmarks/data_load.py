"""Cold vs warm corpus loading for the four leaderboard datasets -> benchmarks/results/data_load.json.

cold  = ``load_corpus`` with an empty cache: parse the source files, build the corpus, write the cache entry;
parse = the same without the cache (``data.cache=false``);
warm  = ``load_corpus`` when the cache entry exists (what every run after the first does).
For the format choice it also times the alternative considered, pickle protocol 5 of the whole Corpus, against
the cache's format (uncompressed .npz + one JSON blob for the strings). Medians over ``repeats`` runs.

    python -m benchmarks.data_load [root=DIR] [repeats=5]

Run it as a module from the repository root (the package installed). ``root`` is the data root holding the
four datasets (default: the datasets folder this project's machines share beside the checkout; see the README's
Datasets section).
"""

from __future__ import annotations

import os
import pickle
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import cli, integer, key_values, write_result
from zoo.config import DataConfig
from zoo.data.cache import load_cached_corpus, save_corpus
from zoo.data.loading import load_corpus

DATASETS = ("beauty", "sports", "toys", "yelp")


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_time(fn, repeats: int) -> float:
    return statistics.median(timed(fn) for _ in range(repeats))


def bench_dataset(name: str, root: Path, repeats: int, scratch: Path) -> dict:
    cfg = DataConfig(name=name, root=str(root), download=False)
    cold_times = []
    for r in range(repeats):
        os.environ["ZOO_CACHE_DIR"] = str(scratch / f"{name}-cold-{r}")  # an empty cache each time
        cold_times.append(timed(lambda: load_corpus(cfg)))
    warm = median_time(lambda: load_corpus(cfg), repeats)  # the last cold run left its entry
    parse = median_time(lambda: load_corpus(DataConfig(name=name, root=str(root), cache=False)), repeats)
    corpus = load_corpus(cfg)
    npz_path, pickle_path = scratch / f"{name}.npz", scratch / f"{name}.pkl"
    npz_write = median_time(lambda: save_corpus(corpus, npz_path), repeats)
    npz_read = median_time(lambda: load_cached_corpus(npz_path), repeats)
    pickle_write = median_time(lambda: pickle_path.write_bytes(pickle.dumps(corpus, protocol=5)), repeats)
    pickle_read = median_time(lambda: pickle.loads(pickle_path.read_bytes()).validate(), repeats)
    cold = statistics.median(cold_times)
    return {
        "users": corpus.num_users,
        "items": corpus.num_items,
        "interactions": corpus.num_interactions,
        "item_text_fields": sorted(corpus.item_text),
        "cold_s": round(cold, 4),
        "parse_only_s": round(parse, 4),
        "warm_s": round(warm, 4),
        "cold_over_warm": round(cold / warm, 1),
        "format": {
            "npz": {"write_s": round(npz_write, 4), "read_s": round(npz_read, 4), "mb": _mb(npz_path)},
            "pickle5": {"write_s": round(pickle_write, 4), "read_s": round(pickle_read, 4), "mb": _mb(pickle_path)},
        },
    }


def _mb(path: Path) -> float:
    return round(path.stat().st_size / 2**20, 2)


def main(argv: list[str] | None = None) -> int:
    return cli(_main, __doc__, argv)


def _main(argv: list[str]) -> None:
    args = key_values(argv, {"root": str(Path(__file__).resolve().parents[2] / "shared" / "datasets"), "repeats": 5})
    root, repeats = Path(args["root"]), integer(args, "repeats", minimum=1)
    started = time.time()
    results = {}
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        for name in DATASETS:
            results[name] = bench_dataset(name, root, repeats, scratch)
            print(name, results[name], flush=True)
    ratios = [r["cold_over_warm"] for r in results.values()]
    payload = {
        "description": "corpus load time: cold (parse + write cache) vs warm (cache hit), medians",
        "repeats": repeats,
        "datasets": results,
        "min_cold_over_warm": min(ratios),
        "note": "shared 2-core machine; see hardware.load_avg_1m for the load during the run",
    }
    print(write_result("data_load", payload, started))


if __name__ == "__main__":
    sys.exit(main())
