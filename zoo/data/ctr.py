"""The CTR view of a rated corpus (KAR on ml1m / ml100k): one example per rating, label = rating > threshold.

Two splits (``data.ctr_split``):

* ``leave_one_out`` (the default, ``fm``'s): the rule of the sequential DataModule, per user and in time order: a
  user with n >= 3 ratings gives the last to test, the second to last to validation and the rest to training (a
  user with fewer ratings gives all of them to training).
* ``users`` (KAR's protocol): the users are split at random 9:1 into training and test users, and one in ten
  training users is held out for validation (model selection; KAR's code selects on test: not here). The split
  uses a fixed seed (``USER_SPLIT_SEED``), so every method and every run seed sees the same users. Each user's
  first ``n_u = min((n+1)//2, data.ctr_prefix)`` ratings are history only (KAR builds the user's knowledge from
  them); every rating from index ``n_u`` on is one example of the user's split.

Each example carries the user, the item, the user's and the item's
categorical features, the label and the rating, and the items the user rated before it (``history``, left-padded,
most recent last, with their ratings) for behaviour-sequence models such as DIN.

Features are bags of tokens, one bag per field: ``user_features`` [B, F_u, T_u] and ``item_features``
[B, F_i, T_i] hold vocabulary ids per field (0 = padding / unknown), so that single-valued fields (gender,
occupation, year) and multi-valued ones (genres) share one layout; ``CTRFeatures.vocab_sizes`` gives each field's
embedding table size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from zoo.data.corpus import Corpus
from zoo.data.datamodule import ShardedDataModule
from zoo.errors import ConfigError, DataError

MULTI_VALUED_FIELDS = ("genres",)  # whitespace-separated token lists; every other field is one token
FREE_TEXT_FIELDS = ("title",)  # not categorical: left out of the default item fields


@dataclass
class CTRFeatures:
    """Field names, vocabularies and the encoded [rows, fields, tokens] id tensors of users and items."""

    user_fields: list[str]
    item_fields: list[str]
    vocab_sizes: dict[str, int]  # "user/<field>" or "item/<field>" -> table size (including the padding id 0)
    users: np.ndarray  # [U, F_u, T_u] int64
    items: np.ndarray  # [N+1, F_i, T_i] int64 (row 0 = padding item)


def encode_fields(
    values: dict[str, list[str]], fields: list[str], prefix: str, rows: int
) -> tuple[np.ndarray, dict[str, int], dict[str, dict[str, int]]]:
    """Encode each field's ``rows`` values as token-id bags: [rows, fields, max tokens], the vocabulary size of
    each field, and the vocabularies. Ids follow sorted token order, so they do not depend on row order."""
    bags = {f: [v.split() if f in MULTI_VALUED_FIELDS else ([v] if v else []) for v in values[f]] for f in fields}
    width = max([1] + [len(bag) for f in fields for bag in bags[f]])
    out = np.zeros((rows, len(fields), width), dtype=np.int64)
    sizes, vocabs = {}, {}
    for j, f in enumerate(fields):
        vocab = {token: i + 1 for i, token in enumerate(sorted({t for bag in bags[f] for t in bag}))}
        for r, bag in enumerate(bags[f]):
            out[r, j, : len(bag)] = [vocab[t] for t in bag]
        sizes[f"{prefix}/{f}"] = len(vocab) + 1
        vocabs[f] = vocab
    return out, sizes, vocabs


def ctr_features(
    corpus: Corpus, user_fields: list[str] | None = None, item_fields: list[str] | None = None
) -> CTRFeatures:
    """The CTRFeatures of ``corpus``: by default every user feature and every item text field but titles."""
    user_fields = list(corpus.user_features) if user_fields is None else list(user_fields)
    item_fields = [f for f in corpus.item_text if f not in FREE_TEXT_FIELDS] if item_fields is None else item_fields
    for kind, fields, table in (("user", user_fields, corpus.user_features), ("item", item_fields, corpus.item_text)):
        unknown = [f for f in fields if f not in table]
        if unknown:
            raise DataError(f"{corpus.name}: no {kind} field '{unknown[0]}' (has {', '.join(table) or 'none'})")
    users, user_sizes, _ = encode_fields(corpus.user_features, user_fields, "user", corpus.num_users)
    items, item_sizes, _ = encode_fields(corpus.item_text, list(item_fields), "item", corpus.num_items + 1)
    return CTRFeatures(user_fields, list(item_fields), {**user_sizes, **item_sizes}, users, items)


CTR_SPLITS = ("leave_one_out", "users")
USER_SPLIT_SEED = 2023  # the users split is the same for every method and run seed
TEST_USERS = 0.1  # KAR's 9:1 user split
VAL_USERS = 0.1  # of the training users, held out for model selection


def knowledge_lengths(corpus: Corpus, cap: int = 30) -> np.ndarray:
    """KAR's ``n_u`` per user: ``min((n + 1) // 2, cap)`` of a user's ``n`` ratings are history only (the user's
    knowledge prompt); the user's examples start at that index."""
    if cap < 1:
        raise ConfigError(f"data.ctr_prefix={cap}: expected >= 1")
    return np.minimum((corpus.lengths() + 1) // 2, cap).astype(np.int64)


def user_split(num_users: int, seed: int = USER_SPLIT_SEED) -> np.ndarray:
    """[U] split id per user (0 = train, 1 = val, 2 = test): 9:1 train:test users, then 1 in 10 training users
    to validation, drawn with a fixed seed."""
    order = np.random.default_rng(seed).permutation(num_users)
    n_test = int(round(TEST_USERS * num_users))
    n_val = int(round(VAL_USERS * (num_users - n_test)))
    out = np.zeros(num_users, dtype=np.int64)
    out[order[:n_test]] = 2
    out[order[n_test : n_test + n_val]] = 1
    return out


def ctr_split_positions(corpus: Corpus, split: str, mode: str = "leave_one_out", prefix: int = 30) -> np.ndarray:
    """Flat interaction positions of ``split`` under the per-user leave-one-out rule (time order) or, with
    ``mode="users"``, KAR's user split (positions from each user's ``n_u`` on)."""
    if split not in ("train", "val", "test"):
        raise DataError(f"unknown split '{split}' (train | val | test)")
    if mode not in CTR_SPLITS:
        raise ConfigError(f"unknown data.ctr_split '{mode}' ({' | '.join(CTR_SPLITS)})")
    lengths = corpus.lengths()
    position = np.arange(corpus.num_interactions) - np.repeat(corpus.offsets[:-1], lengths)
    if mode == "users":
        wanted = {"train": 0, "val": 1, "test": 2}[split]
        of_user = np.repeat(user_split(corpus.num_users) == wanted, lengths)
        return np.flatnonzero(of_user & (position >= np.repeat(knowledge_lengths(corpus, prefix), lengths)))
    length = np.repeat(lengths, lengths)
    held_out = length >= 3
    if split == "test":
        mask = held_out & (position == length - 1)
    elif split == "val":
        mask = held_out & (position == length - 2)
    else:
        mask = ~held_out | (position < length - 2)
    return np.flatnonzero(mask)


class CTRDataset(Dataset):
    """Batches of CTR examples built at once from index lists (numpy gathers, as ``ExampleDataset``)."""

    def __init__(
        self,
        corpus: Corpus,
        features: CTRFeatures,
        split: str,
        max_history: int,
        threshold: float,
        mode: str = "leave_one_out",
        prefix: int = 30,
    ) -> None:
        if corpus.ratings is None:
            raise DataError(f"{corpus.name}: the CTR view needs ratings (ml1m, ml100k, or atomic files with 'rating')")
        self.corpus, self.features, self.max_history, self.threshold = corpus, features, max_history, threshold
        self.positions = ctr_split_positions(corpus, split, mode, prefix)
        self.user_of = np.repeat(np.arange(corpus.num_users, dtype=np.int64), corpus.lengths())

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, index: list[int]) -> dict:
        c = self.corpus
        pos = self.positions[np.asarray(index, dtype=np.int64)]
        user = self.user_of[pos]
        item = c.items[pos]
        rating = c.ratings[pos].astype(np.float32)
        cols = pos[:, None] - self.max_history + np.arange(self.max_history)[None, :]
        valid = cols >= c.offsets[user][:, None]
        safe = np.clip(cols, 0, None)
        return {
            "user": torch.from_numpy(user),
            "item": torch.from_numpy(item),
            "user_features": torch.from_numpy(self.features.users[user]),
            "item_features": torch.from_numpy(self.features.items[item]),
            "history": torch.from_numpy(np.where(valid, c.items[safe], 0)),
            "history_rating": torch.from_numpy(np.where(valid, c.ratings[safe], 0).astype(np.float32)),
            "rating": torch.from_numpy(rating),
            "label": torch.from_numpy((rating > self.threshold).astype(np.float32)),
        }


class CTRDataModule(ShardedDataModule):
    """Train / val / test loaders of the CTR view of ``cfg`` (a ``DataConfig``; the corpus is loaded and cached
    as for the sequential DataModule). The behaviour history holds ``data.max_len`` items; the label is
    rating > ``threshold`` (``data.ctr_threshold``); the split is ``data.ctr_split``. What a CTR model reads:
    ``features`` (the fields and their vocabulary sizes), ``num_users``, ``num_items``."""

    def __init__(
        self,
        cfg,
        seed: int = 42,
        corpus: Corpus | None = None,
        user_fields: list[str] | None = None,
        item_fields: list[str] | None = None,
        threshold: float = 3.0,
    ) -> None:
        super().__init__(cfg, seed, corpus)
        self.threshold = threshold
        self.features = ctr_features(self.corpus, user_fields, item_fields)
        self.max_history = int(cfg.max_len)
        self.split_mode = str(getattr(cfg, "ctr_split", "leave_one_out"))
        self.prefix = int(getattr(cfg, "ctr_prefix", 30))
        if self.split_mode not in CTR_SPLITS:
            raise ConfigError(f"unknown data.ctr_split '{self.split_mode}' ({' | '.join(CTR_SPLITS)})")
        self._datasets: dict[str, CTRDataset] = {}

    def dataset(self, split: str) -> CTRDataset:
        if split not in self._datasets:
            self._datasets[split] = CTRDataset(
                self.corpus, self.features, split, self.max_history, self.threshold, self.split_mode, self.prefix
            )
        return self._datasets[split]

    def batch_dataset(self, split: str, train: bool) -> CTRDataset:
        return self.dataset(split)
