"""Constrained beam search: only real items come out, and it finds the exact top-K where enumeration can check it."""

from __future__ import annotations

import itertools

import pytest
import torch

from zoo.modules.beam_search import beam_search, candidate_beam_search, segment_topk
from zoo.modules.trie import ItemTrie


class PrefixScorer:
    """A hand-built scorer whose next-token logits depend on the whole prefix (a fixed random table indexed by a
    hash of the prefix), following the step protocol: it reorders its prefixes with ``parents`` like a model
    reorders its KV cache. ``sequence_logprob`` scores any full sequence the same way, for enumeration."""

    def __init__(self, batch: int, vocab: int, seed: int = 0, table_size: int = 4099) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.table = torch.randn(batch, table_size, vocab, generator=gen) * 3
        self.batch, self.vocab, self.size = batch, vocab, table_size
        self.prefix_hash: torch.Tensor | None = None

    def _hash(self, previous: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        return (previous * 31 + token + 7) % self.size

    def __call__(self, parents, tokens):
        rows = torch.arange(self.batch)[:, None]
        if parents is None:
            self.prefix_hash = torch.zeros(self.batch, 1, dtype=torch.long)
        else:
            self.prefix_hash = self._hash(self.prefix_hash[rows, parents], tokens)
        return self.table[rows, self.prefix_hash]

    def sequence_logprob(self, b: int, seq: list[int], allowed=None) -> float:
        """Log-probability of ``seq``; with ``allowed(prefix) -> tokens``, each step's softmax over those only."""
        h, total = torch.tensor(0), 0.0
        for t, tok in enumerate(seq):
            logits = self.table[b, h]
            if allowed is not None:
                keep = torch.full_like(logits, float("-inf"))
                keep[list(allowed(tuple(seq[:t])))] = 0.0
                logits = logits + keep
            total += torch.log_softmax(logits, -1)[tok].item()
            h = self._hash(h, torch.tensor(tok))
        return total


def random_trie(num_items: int, depth: int, vocab: int, seed: int) -> tuple[ItemTrie, list[list[int]]]:
    gen = torch.Generator().manual_seed(seed)
    seqs: set[tuple[int, ...]] = set()
    while len(seqs) < num_items:
        seqs.add(tuple(torch.randint(vocab, (depth,), generator=gen).tolist()))
    ordered = sorted(seqs)
    return ItemTrie([list(s) for s in ordered], vocab_size=vocab), [list(s) for s in ordered]


def exhaustive_ranking(scorer: PrefixScorer, b: int, seqs: list[list[int]]) -> list[tuple[float, int]]:
    scored = [(scorer.sequence_logprob(b, s), item) for item, s in enumerate(seqs, start=1)]
    return sorted(scored, key=lambda x: -x[0])


@pytest.mark.parametrize("seed", [0, 1])
def test_renormalised_wide_beam_equals_enumeration_over_the_allowed_tokens(seed):
    """``renormalize=True``: each step's softmax runs over the trie's allowed tokens only, so the scores of all items
    are a distribution (they sum to 1), a token with no alternative costs nothing, and the ranking is that of the
    brute-force masked enumeration -- which differs from the full-vocabulary one."""
    seqs = [[0, 1, 2], [0, 1, 3], [0, 4, 2], [1, 2, 2], [3, 3, 3], [3, 3, 0], [4, 0, 1]]
    trie = ItemTrie(seqs, vocab_size=5)

    def allowed(prefix):
        return {s[len(prefix)] for s in seqs if tuple(s[: len(prefix)]) == prefix}

    scorer = PrefixScorer(batch=3, vocab=5, seed=seed)
    result = beam_search(scorer, trie, batch_size=3, num_beams=len(seqs), renormalize=True)
    plain = beam_search(PrefixScorer(batch=3, vocab=5, seed=seed), trie, batch_size=3, num_beams=len(seqs))
    for b in range(3):
        expected = sorted(
            ((scorer.sequence_logprob(b, s, allowed), item) for item, s in enumerate(seqs, start=1)),
            key=lambda x: -x[0],
        )
        assert result.items[b].tolist() == [item for _, item in expected]
        assert torch.allclose(result.scores[b], torch.tensor([s for s, _ in expected]), atol=1e-5)
        assert torch.isclose(result.scores[b].exp().sum(), torch.tensor(1.0), atol=1e-5)
        renormed = dict(zip(result.items[b].tolist(), result.scores[b].tolist()))
        full = dict(zip(plain.items[b].tolist(), plain.scores[b].tolist()))
        assert all(renormed[i] >= full[i] - 1e-6 for i in full)  # renormalising can only raise an item's score
    assert any(result.items[b].tolist() != plain.items[b].tolist() for b in range(3))


def node_of(trie: ItemTrie, prefix: list[int]) -> int:
    node = torch.tensor([0])
    for token in prefix:
        node = trie.step(node, torch.tensor([token]))
    return int(node)


def test_node_log_mass_is_the_logsumexp_of_the_items_below():
    seqs = [[0, 1], [0, 2], [1, 3, 4], [1, 3, 0], [2]]
    trie = ItemTrie(seqs, vocab_size=5)
    scores = torch.randn(2, len(seqs) + 1, generator=torch.Generator().manual_seed(0))
    scores[1, 3] = float("-inf")  # an item with no prior mass
    mass = trie.node_log_mass(scores)
    for node in range(trie.num_nodes):
        below = [i for i, s in enumerate(seqs, start=1) if any(node_of(trie, s[:d]) == node for d in range(len(s) + 1))]
        for b in range(2):
            expected = torch.logsumexp(scores[b, below], 0)
            assert torch.isclose(mass[b, node], expected) or (expected.isinf() and mass[b, node].isinf())
    assert torch.allclose(mass[:, 0], torch.logsumexp(scores[:, 1:], 1))  # the root holds every item


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("renormalize", [False, True])
def test_item_prior_adds_each_items_prior_to_its_score(seed, renormalize):
    """``item_prior``: with beams for every item the list is the exact ranking of sequence score + prior (the
    root's prior mass subtracted), and a strong prior reorders the list by the prior; candidate-restricted
    decoding gives its candidates the same scores up to a per-row constant."""
    trie, seqs = random_trie(num_items=25, depth=3, vocab=5, seed=seed)
    prior = torch.randn(3, 26, generator=torch.Generator().manual_seed(seed + 10))
    prior[:, 0] = float("-inf")
    allowed = None
    if renormalize:

        def allowed(prefix):
            return {s[len(prefix)] for s in seqs if tuple(s[: len(prefix)]) == prefix}

    plain = beam_search(PrefixScorer(3, 5, seed), trie, 3, 30, renormalize=renormalize)
    result = beam_search(PrefixScorer(3, 5, seed), trie, 3, 30, renormalize=renormalize, item_prior=prior)
    scorer = PrefixScorer(3, 5, seed)
    for b in range(3):
        root = torch.logsumexp(prior[b, 1:], 0).item()
        expected = sorted(
            ((scorer.sequence_logprob(b, s, allowed) + prior[b, i].item() - root, i) for i, s in enumerate(seqs, 1)),
            key=lambda x: -x[0],
        )
        assert result.items[b, :25].tolist() == [i for _, i in expected]
        assert torch.allclose(result.scores[b, :25], torch.tensor([x for x, _ in expected]), atol=1e-4)
    assert any(result.items[b].tolist() != plain.items[b].tolist() for b in range(3))
    spread = torch.stack([torch.randperm(25, generator=torch.Generator().manual_seed(b)) for b in range(3)]) * 100.0
    strong = torch.cat([torch.full((3, 1), float("-inf")), spread], 1)  # gaps far above any sequence score's
    strongest = beam_search(PrefixScorer(3, 5, seed), trie, 3, 5, renormalize=renormalize, item_prior=strong)
    assert strongest.items.tolist() == (torch.argsort(spread, 1, descending=True)[:, :5] + 1).tolist()
    candidates = torch.stack([torch.randperm(25, generator=torch.Generator().manual_seed(b))[:8] + 1 for b in range(3)])
    restricted = candidate_beam_search(
        PrefixScorer(3, 5, seed), [[]] + seqs, candidates, 5, 8, renormalize=renormalize, item_prior=prior
    )
    for b in range(3):
        assert sorted(restricted.items[b].tolist()) == sorted(candidates[b].tolist())
        full = dict(zip(result.items[b].tolist(), result.scores[b].tolist()))
        if not renormalize:  # renormalised scores are over each row's candidates instead of all items
            shift = [restricted.scores[b, j].item() - full[i] for j, i in enumerate(restricted.items[b].tolist())]
            assert max(shift) - min(shift) < 1e-4


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_wide_beam_equals_exhaustive_enumeration(seed):
    """With at least as many beams as items nothing is pruned: the beam list is the exact ranking of all items."""
    trie, seqs = random_trie(num_items=30, depth=3, vocab=5, seed=seed)
    scorer = PrefixScorer(batch=4, vocab=5, seed=seed)
    result = beam_search(scorer, trie, batch_size=4, num_beams=40)
    for b in range(4):
        expected = exhaustive_ranking(scorer, b, seqs)
        assert result.items[b, :30].tolist() == [item for _, item in expected]
        assert torch.allclose(result.scores[b, :30], torch.tensor([s for s, _ in expected]), atol=1e-5)
        assert result.items[b, 30:].eq(0).all() and torch.isinf(result.scores[b, 30:]).all()
        for k in range(30):  # the decoded tokens are the item's Semantic ID
            assert result.tokens[b, k].tolist() == seqs[result.items[b, k] - 1]


def test_exact_top_k_when_scores_do_not_depend_on_the_prefix():
    """Per-step scores independent of the prefix over a complete trie: beam K returns the exact top-K."""
    vocab, depth, k = 4, 3, 7
    seqs = [list(s) for s in itertools.product(range(vocab), repeat=depth)]
    trie = ItemTrie(seqs, vocab_size=vocab)
    step_logits = torch.randn(2, depth, vocab, generator=torch.Generator().manual_seed(3))
    calls = []

    def scorer(parents, tokens):
        t = len(calls)
        calls.append(t)
        width = 1 if parents is None else parents.shape[1]
        return step_logits[:, t][:, None, :].expand(2, width, vocab)

    result = beam_search(scorer, trie, batch_size=2, num_beams=k)
    logp = torch.log_softmax(step_logits, -1)
    for b in range(2):
        totals = torch.tensor([sum(logp[b, t, s[t]].item() for t in range(depth)) for s in seqs])
        best = torch.argsort(totals, descending=True, stable=True)[:k] + 1
        assert result.items[b].tolist() == best.tolist()


@pytest.mark.parametrize("batch, beams", [(1, 1), (3, 5), (8, 20)])
def test_constrained_results_are_real_distinct_items(batch, beams):
    trie, seqs = random_trie(num_items=60, depth=4, vocab=9, seed=batch)
    scorer = PrefixScorer(batch=batch, vocab=9, seed=beams)
    result = beam_search(scorer, trie, batch_size=batch, num_beams=beams)
    assert result.items.shape == (batch, beams)
    assert ((result.items >= 1) & (result.items <= 60)).all()
    for row in result.items.tolist():
        assert len(set(row)) == len(row)
    assert (result.scores[:, :-1] >= result.scores[:, 1:]).all()


def test_sequences_of_different_lengths_finish_and_carry_over():
    """Titles end with EOS (= 0 here) at different lengths; finished beams keep their score while others grow."""
    seqs = [[1, 0], [2, 3, 0], [2, 4, 4, 0], [3, 1, 0], [2, 4, 1, 0]]
    trie = ItemTrie(seqs, vocab_size=5)
    scorer = PrefixScorer(batch=2, vocab=5, seed=5)
    result = beam_search(scorer, trie, batch_size=2, num_beams=5, pad_token=0)
    for b in range(2):
        expected = exhaustive_ranking(scorer, b, seqs)
        assert result.items[b].tolist() == [item for _, item in expected]


def test_unconstrained_search_can_return_invalid_ids():
    """Without the trie the best sequence may be no item: it decodes to 0 (the invalid-ID rate's numerator)."""
    trie = ItemTrie([[0, 0], [1, 1]], vocab_size=3)
    favourite = torch.tensor([-5.0, -5.0, 5.0])  # token 2 starts no item

    def scorer(parents, tokens):
        return favourite.expand(1, 1 if parents is None else parents.shape[1], 3)

    free = beam_search(scorer, trie, batch_size=1, num_beams=2, constrained=False)
    assert free.items[0, 0] == 0 and free.tokens[0, 0].tolist() == [2, 2]
    constrained = beam_search(scorer, trie, batch_size=1, num_beams=2)
    assert sorted(constrained.items[0].tolist()) == [1, 2]


def test_segment_topk_groups_and_pads():
    groups = torch.tensor([1, 0, 1, 1, 0])
    scores = torch.tensor([0.5, 0.1, 0.9, 0.5, 0.2])
    out = segment_topk(groups, scores, num_groups=3, k=2)
    assert out.tolist() == [[4, 1], [2, 0], [-1, -1]]
