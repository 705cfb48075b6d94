"""The four leaderboard datasets from the offline copies (../shared/datasets): counts and sequence lengths
against the datasets README table, the leave-one-out split sizes, item text and raw ids, and the cache round trip
(cold parse == warm read). Skipped when the folder is absent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from zoo.config import DataConfig
from zoo.data.datamodule import DataSpec, SequentialDataModule
from zoo.data.loading import load_corpus

SHARED = Path(__file__).parents[2] / "shared" / "datasets"
pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason=f"no datasets at {SHARED}")

# users, items, interactions, min / max sequence length (README table)
README_TABLE = {
    "beauty": (22363, 12101, 198502, 5, 204),
    "sports": (35598, 18357, 296337, 5, 296),
    "toys": (19412, 11924, 167597, 5, 550),
    "yelp": (30431, 20033, 316354, 5, 350),
}


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """Each dataset loaded cold (parsing, into a fresh cache) and warm (from that cache)."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ZOO_CACHE_DIR", str(cache))
        loaded = {}
        for name in README_TABLE:
            cfg = DataConfig(name=name, root=str(SHARED), download=False)
            loaded[name] = (cfg, load_corpus(cfg), load_corpus(cfg))
        yield loaded


@pytest.mark.parametrize("name", README_TABLE)
def test_counts_match_the_readme_and_cache_round_trips(corpora, name):
    _, cold, warm = corpora[name]
    users, items, interactions, min_len, max_len = README_TABLE[name]
    lengths = cold.lengths()
    assert (cold.num_users, cold.num_items, cold.num_interactions) == (users, items, interactions)
    assert (lengths.min(), lengths.max()) == (min_len, max_len)
    assert np.array_equal(np.unique(cold.items), np.arange(1, items + 1))  # contiguous ids, all used
    assert np.array_equal(cold.offsets, warm.offsets) and np.array_equal(cold.items, warm.items)
    assert cold.item_text == warm.item_text and cold.item_ids == warm.item_ids and cold.user_ids == warm.user_ids


@pytest.mark.parametrize("name", README_TABLE)
def test_leave_one_out_split_sizes(corpora, name):
    cfg, corpus, _ = corpora[name]
    users, _, interactions, _, _ = README_TABLE[name]
    dm = SequentialDataModule(cfg, corpus=corpus)
    test, val = dm.examples("test"), dm.examples("val")
    assert len(test) == len(val) == users
    last = corpus.offsets[1:] - 1
    assert np.array_equal(test.target, corpus.items[last]) and np.array_equal(val.target, corpus.items[last - 1])
    assert len(dm.examples("train")) == users  # sequence mode: one row per user
    dm.connect(DataSpec(train_mode="prefix"))
    assert len(dm.examples("train")) == interactions - 3 * users  # targets s[1..n-3] of every user


def test_file_ids_are_internal_ids_and_users_follow_lines(corpora):
    first_line = (SHARED / "Beauty" / "Beauty.txt").read_text().split("\n", 1)[0].split()
    corpus = corpora["beauty"][1]
    assert corpus.sequence(0).tolist() == [int(t) for t in first_line[1:]]


def test_item_text_and_raw_ids(corpora):
    beauty, sports, toys, yelp = (corpora[n][1] for n in ("beauty", "sports", "toys", "yelp"))
    for corpus, placeholders in ((beauty, 7), (toys, 59)):
        titles = corpus.item_text["title"][1:]
        assert sum(1 for t in titles if not t) == placeholders  # title_<id> placeholders count as missing
        assert not any("&amp;" in t or "&quot;" in t for t in titles)
    assert beauty.item_ids[1] == "B004756YJA" and beauty.user_ids[0] == "A1YJEY40YUW4SE"
    assert toys.item_ids[1] == "B005E7BDXW"
    assert sports.title(2) == "tipton polymer gun cleaning picks"  # IDGenRec pseudo-title
    assert sports.item_ids[1] == "1881509818"
    assert yelp.title(1) == "The Great Greek" and yelp.item_ids[1] == "5eV8oUGdBXylwB7HeaDFOA"
    assert yelp.item_text["attributes"][11394] == "Restaurants, Vietnamese, Soup"
    assert beauty.item_text["attributes"][4] == "1 2 3"  # anonymous attribute ids for the Amazon sets


def test_yelp_keeps_repeated_items(corpora):
    yelp = corpora["yelp"][1]
    repeats = sum(len(s) - len(set(s.tolist())) for s in map(yelp.sequence, range(yelp.num_users)))
    assert repeats == 11830
