"""The CTR view for KAR: per-user leave-one-out over ratings, label = rating > 3, field encodings, histories."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from zoo.config import DataConfig
from zoo.data.corpus import Corpus
from zoo.data.ctr import CTRDataModule, ctr_features, ctr_split_positions
from zoo.data.sources.ml1m import load_ml1m
from zoo.errors import DataError

FIXTURES = Path(__file__).parent / "fixtures" / "data"


@pytest.fixture
def ml1m(tmp_path) -> Corpus:
    path = tmp_path / "ml-1m.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for name in ("ratings.dat", "movies.dat", "users.dat"):
            archive.write(FIXTURES / "ml-1m" / name, f"ml-1m/{name}")
    return load_ml1m(path)


def all_rows(dm: CTRDataModule, split: str) -> dict:
    dataset = dm.dataset(split)
    return dataset[list(range(len(dataset)))]


def test_split_is_per_user_leave_one_out(ml1m):
    # user 1: [30, 10, 20] ratings [4, 5, 3]; user 2: [20, 10, 40] ratings [2, 4, 5]; user 3: [30] (train only)
    assert ctr_split_positions(ml1m, "test").tolist() == [2, 5]
    assert ctr_split_positions(ml1m, "val").tolist() == [1, 4]
    assert ctr_split_positions(ml1m, "train").tolist() == [0, 3, 6]
    with pytest.raises(DataError, match="unknown split"):
        ctr_split_positions(ml1m, "dev")


def test_examples_carry_labels_features_and_history(ml1m):
    dm = CTRDataModule(DataConfig(max_len=3), corpus=ml1m)
    test = all_rows(dm, "test")
    assert test["user"].tolist() == [0, 1] and test["item"].tolist() == [2, 4]  # movies 20 and 40
    assert test["rating"].tolist() == [3.0, 5.0] and test["label"].tolist() == [0.0, 1.0]
    assert test["history"].tolist() == [[0, 3, 1], [0, 2, 1]]
    assert test["history_rating"].tolist() == [[0, 4, 5], [0, 2, 4]]
    features = dm.features
    assert features.user_fields == ["gender", "age", "occupation", "zip_code"]
    assert features.item_fields == ["year", "genres"]  # titles are free text, not a field
    assert features.vocab_sizes["user/gender"] == 3 and features.vocab_sizes["item/genres"] == 10  # 9 genres + padding
    assert test["item_features"].shape[1:] == (2, 3)  # two fields, widest bag: three genres
    jumanji = test["item_features"][0]
    assert (jumanji[1] > 0).sum() == 3 and (jumanji[0] > 0).sum() == 1  # genres bag, single year token
    assert torch.equal(test["user_features"][0], torch.from_numpy(features.users[0]))


def test_field_vocabularies_do_not_depend_on_row_order():
    values = {"colour": ["red", "blue", "red", ""]}
    a = ctr_features(Corpus.from_sequences("a", [[1], [1], [1], [1]], user_features=values), item_fields=[])
    assert a.users[:, 0, 0].tolist() == [2, 1, 2, 0]  # sorted tokens: blue=1, red=2; "" = 0


def test_loaders_cover_every_rating(ml1m):
    dm = CTRDataModule(DataConfig(batch_size=2, eval_batch_size=2), corpus=ml1m)
    seen = sum(len(b["label"]) for split in ("train", "val", "test") for b in getattr(dm, f"{split}_dataloader")())
    assert seen == ml1m.num_interactions


def test_needs_ratings_and_known_fields():
    corpus = Corpus.from_sequences("unrated", [[1, 2, 3]])
    with pytest.raises(DataError, match="needs ratings"):
        CTRDataModule(DataConfig(), corpus=corpus).dataset("train")
    rated = Corpus.from_sequences("rated", [[1, 2, 3]], ratings=np.array([1, 2, 3], dtype=np.float32))
    with pytest.raises(DataError, match="no user field 'age'"):
        CTRDataModule(DataConfig(), corpus=rated, user_fields=["age"])


def test_users_split_is_kar_9_to_1_with_validation_from_training_users_and_examples_from_n_u():
    from zoo.data.ctr import knowledge_lengths, user_split

    rng = np.random.default_rng(0)
    sequences = [list(rng.permutation(30)[: int(rng.integers(2, 12))] + 1) for _ in range(200)]
    ratings = rng.integers(1, 6, size=sum(len(s) for s in sequences)).astype(np.float32)
    corpus = Corpus.from_sequences("rated", sequences, num_items=30, ratings=ratings)
    split = user_split(corpus.num_users)
    assert (split == 2).sum() == 20 and (split == 1).sum() == 18 and (split == 0).sum() == 162
    assert np.array_equal(split, user_split(corpus.num_users)), "a fixed seed: the same users for every run"
    cut = knowledge_lengths(corpus, 3)
    assert cut.tolist()[:3] == [min((len(s) + 1) // 2, 3) for s in sequences[:3]]
    user_of = np.repeat(np.arange(corpus.num_users), corpus.lengths())
    seen = []
    for name, sid in (("train", 0), ("val", 1), ("test", 2)):
        pos = ctr_split_positions(corpus, name, "users", 3)
        assert set(split[user_of[pos]]) == {sid}
        assert (pos - corpus.offsets[user_of[pos]] >= cut[user_of[pos]]).all()
        seen.append(pos)
    everything = np.sort(np.concatenate(seen))
    expected = np.flatnonzero(np.arange(len(user_of)) - corpus.offsets[user_of] >= cut[user_of])
    assert np.array_equal(everything, expected), "every rating from n_u on is an example of exactly one split"
    dm = CTRDataModule(DataConfig(ctr_split="users", ctr_prefix=3), corpus=corpus)
    assert len(dm.dataset("test")) == len(seen[2])
    assert len(CTRDataModule(DataConfig(), corpus=corpus).dataset("test")) == (corpus.lengths() >= 3).sum()
    from zoo.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown data.ctr_split"):
        CTRDataModule(DataConfig(ctr_split="random"), corpus=corpus)
