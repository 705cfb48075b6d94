"""Item indexing for P5-style methods (OpenP5's ``utils/indexing.py``, rewritten): how each item is named in
prompts and generated as a target. Built from the **training part** of every sequence only (leave-one-out:
s[:n-2]; sources with their own split: the training examples), so no validation or test interaction shapes an id.

* ``random`` (the default and the leak-free control): a seeded permutation, id = ``str(1001 + rank)``.
* ``sequential`` (OpenP5's numbering, the leaky cautionary row): items numbered from 1001 in order of first
  appearance in the users' training parts, so consecutive items of a user often get consecutive numbers; items
  never seen in training are numbered after them in item order (OpenP5 numbers them from the last two items of
  each user, which would read validation and test order).
* ``collaborative``: spectral clustering of the **sparse** item-item co-occurrence graph of the training parts
  (OpenP5 builds it dense N x N float64, its issue #41), recursively until a cluster holds at most
  ``token_size`` items; each level appends a token ``<CI{k}>`` (k = the cluster at that level) and the last token
  numbers the item within its leaf. Items never seen in training have no edges: as in OpenP5 they get only a
  last token, under one reserved first token ``<CI{token_size}>`` so that their ids stay unique.

Every id string is unique (checked). The ``item_index`` stage caches the result (``ids.json``).
"""

from __future__ import annotations

import json
from collections import deque

import numpy as np

from zoo.data.corpus import Corpus
from zoo.errors import ConfigError, DataError
from zoo.io import write_json_atomic
from zoo.stages import STAGES, Artifact, Stage

INDEXINGS = ("random", "sequential", "collaborative")
FIRST_ID = 1001


def training_sequences(corpus: Corpus) -> list[np.ndarray]:
    """The interactions an index may read: each user's s[:n-2] under leave-one-out, or each training example
    (history + target) of a source with its own split."""
    if corpus.fixed_splits:
        split = corpus.fixed_splits.get("train")
        if split is None:
            raise DataError(f"{corpus.name}: no 'train' split to build an item index from")
        return [
            np.append(split.history[split.offsets[e] : split.offsets[e + 1]], split.targets[e])
            for e in range(len(split))
        ]
    return [corpus.items[a : max(a, b - 2)] for a, b in zip(corpus.offsets[:-1], corpus.offsets[1:])]


def random_index(num_items: int, seed: int) -> list[str]:
    ranks = np.random.default_rng(seed).permutation(num_items)
    return [""] + [str(FIRST_ID + int(r)) for r in ranks]


def sequential_index(num_items: int, sequences: list[np.ndarray]) -> list[str]:
    number = np.zeros(num_items + 1, dtype=np.int64)
    nxt = FIRST_ID
    for seq in sequences:
        for item in seq.tolist():
            if number[item] == 0:
                number[item] = nxt
                nxt += 1
    for item in range(1, num_items + 1):  # never seen in training: after the seen ones, in item order
        if number[item] == 0:
            number[item] = nxt
            nxt += 1
    return [""] + [str(int(n)) for n in number[1:]]


def cooccurrence(num_items: int, sequences: list[np.ndarray]):
    """Sparse [N+1, N+1] co-occurrence counts: how many users' training parts hold both items (diagonal 0)."""
    import scipy.sparse as sp

    rows = np.repeat(np.arange(len(sequences)), [len(s) for s in sequences])
    cols = np.concatenate(sequences) if sequences else np.zeros(0, dtype=np.int64)
    users = sp.csr_matrix((np.ones(len(cols)), (rows, cols)), shape=(len(sequences), num_items + 1))
    users.data[:] = 1.0  # an item repeated in one sequence counts once
    graph = (users.T @ users).tocsr()
    graph.setdiag(0)
    graph.eliminate_zeros()
    return graph


def _split(graph, members: np.ndarray, n_clusters: int, seed: int) -> np.ndarray:
    """Cluster labels of ``members`` (spectral clustering on their sub-graph); an even split of the ordered
    members when the graph gives fewer than two clusters (e.g. no edges)."""
    import warnings

    from sklearn.cluster import SpectralClustering

    k = min(n_clusters, len(members))
    sub = graph[members][:, members]
    labels = None
    if sub.nnz:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Graph is not fully connected": clusters are still returned
            try:
                labels = SpectralClustering(
                    n_clusters=k, affinity="precomputed", assign_labels="cluster_qr", random_state=seed
                ).fit_predict(sub)
            except (ValueError, np.linalg.LinAlgError):
                labels = None
    if labels is None or len(np.unique(labels)) < 2:
        labels = np.arange(len(members)) * k // len(members)
    _, labels = np.unique(labels, return_inverse=True)  # 0..k'-1
    return labels


def collaborative_index(
    num_items: int, sequences: list[np.ndarray], token_size: int = 200, n_clusters: int = 20, seed: int = 0
) -> tuple[list[str], list[str]]:
    """(id string of each item, the new tokens) by recursive spectral clustering (see the module docstring)."""
    if token_size < 2 or n_clusters < 2:
        raise ConfigError(
            f"collaborative indexing needs token_size >= 2 and n_clusters >= 2 ({token_size}, {n_clusters})"
        )
    if n_clusters > token_size:
        raise ConfigError(f"model.n_clusters={n_clusters} must not exceed model.token_size={token_size}")
    graph = cooccurrence(num_items, sequences)
    seen = np.zeros(num_items + 1, dtype=bool)
    for seq in sequences:
        seen[seq] = True
    seen[0] = False
    codes: dict[int, list[int]] = {}
    queue = deque([(np.flatnonzero(seen), [])])
    while queue:  # breadth first, as OpenP5
        members, prefix = queue.popleft()
        if len(members) <= token_size:
            for j, item in enumerate(members.tolist()):
                codes[item] = [*prefix, j]
            continue
        labels = _split(graph, members, n_clusters, seed)
        for label in range(int(labels.max()) + 1):
            queue.append((members[labels == label], [*prefix, label]))
    unseen = [i for i in range(1, num_items + 1) if not seen[i]]
    for j, item in enumerate(unseen):  # a last token only (base token_size), under the reserved token
        digits = []
        while True:
            digits.append(j % token_size)
            j //= token_size
            if j == 0:
                break
        codes[item] = [token_size, *reversed(digits)]
    ids = [""] + ["".join(f"<CI{c}>" for c in codes[i]) for i in range(1, num_items + 1)]
    tokens = [f"<CI{k}>" for k in range(token_size + (1 if unseen else 0))]
    return ids, tokens


def build_index(
    corpus: Corpus, indexing: str, seed: int, token_size: int = 200, n_clusters: int = 20
) -> tuple[list[str], list[str]]:
    """(id string of items 0..N, "" for padding, and the new tokens the ids need) of one indexing scheme."""
    if indexing not in INDEXINGS:
        from zoo.registry import nearest

        raise ConfigError(f"unknown model.indexing '{indexing}'; nearest: {nearest(indexing, list(INDEXINGS))}")
    sequences = training_sequences(corpus)
    if indexing == "random":
        ids, tokens = random_index(corpus.num_items, seed), []
    elif indexing == "sequential":
        ids, tokens = sequential_index(corpus.num_items, sequences), []
    else:
        ids, tokens = collaborative_index(corpus.num_items, sequences, token_size, n_clusters, seed)
    if len(set(ids[1:])) != corpus.num_items:
        raise DataError(f"{corpus.name}: {indexing} indexing gave {corpus.num_items - len(set(ids[1:]))} repeated ids")
    return ids, tokens


@STAGES.register("item_index")
class ItemIndexStage(Stage):
    """The item id strings of ``model.indexing`` (``ids.json``: ``ids`` [N+1], ``tokens``: the new tokens)."""

    name = "item_index"
    version = 1

    def inputs(self, cfg, corpus):
        m = cfg.model
        inputs = {"indexing": m.indexing, "seed": int(cfg.seed)}
        if m.indexing == "collaborative":
            inputs.update(token_size=int(m.token_size), n_clusters=int(m.n_clusters))
        return inputs

    def build(self, cfg, corpus, out, upstream):
        m = cfg.model
        ids, tokens = build_index(corpus, m.indexing, int(cfg.seed), int(m.token_size), int(m.n_clusters))
        write_json_atomic(out / "ids.json", {"ids": ids, "tokens": tokens})
        lengths = [len(s) for s in ids[1:]]
        return {"index/new_tokens": len(tokens), "index/mean_id_chars": float(np.mean(lengths)) if lengths else 0.0}


def load_index(artifact: Artifact) -> tuple[list[str], list[str]]:
    record = json.loads(artifact.file("ids.json").read_text())
    return record["ids"], record["tokens"]
