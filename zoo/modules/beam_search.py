"""Batched beam search over any next-token scorer, constrained by an :class:`ItemTrie` so that every finished beam
is a real item (TIGER's Semantic IDs, an LLM's tokenised titles), or unconstrained for comparison.

The scorer is one callable, ``step(parents, tokens) -> logits``:

* first call: ``step(None, None)`` -> logits [B, 1, V] for the first token of each of the B sequences;
* later calls: ``parents`` [B, W] says which beam of the previous call (index 0..W'-1 of the same batch element)
  each new beam continues, ``tokens`` [B, W] is the token just appended to it -> logits [B, W, V].

The scorer keeps its own state (encoder output, KV cache) and reorders it with ``parents``, so models reuse their
encoder output and cache across steps. Beams are dense [B, W]; slots with no candidate left (a trie with fewer
than W items below the root) carry score -inf and decode to item 0.

Scores are sums of log-softmax over the full vocabulary (not renormalised over the allowed tokens), i.e. the
model's joint probability of each complete item sequence. With ``renormalize=True`` (constrained only) each step's
log-probabilities are renormalised over the tokens the trie allows there, so a score is the probability of the item
under the model restricted to real items: a token with no alternative costs nothing, and the ranking is the one
MSL trains (at temperature 1). With ``item_prior`` ([B, N+1] per-row log-weights of the items, e.g. a weight times
another scorer's log-probabilities) each constrained step also adds the change in the subtree log-mass of the prior
(:meth:`ItemTrie.node_log_mass`), so a finished item's score is its sequence score plus its prior (less the root's
mass, the same for every item of a row): a product of experts, with the prior as a lookahead while decoding.
Sequences of different lengths are fine as long as
no item's sequence is a prefix of another's (end titles with EOS): a beam that reaches a leaf is finished and
carried forward with its score unchanged while the others grow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from zoo.modules.trie import ItemTrie, group_logsumexp

StepFn = Callable[[torch.Tensor | None, torch.Tensor | None], torch.Tensor]


@dataclass
class BeamSearchResult:
    items: torch.Tensor  # [B, K] item ids, best first; 0 = no item (empty slot, or an invalid unconstrained decode)
    scores: torch.Tensor  # [B, K] log-probability of each beam (-inf for empty slots)
    tokens: torch.Tensor  # [B, K, T] decoded tokens (pad_token after a beam finished)


def segment_topk(groups: torch.Tensor, scores: torch.Tensor, num_groups: int, k: int) -> torch.Tensor:
    """For candidates tagged with a group id, the indices of the ``k`` best of each group ([G, k], -1 where a
    group has fewer candidates). Ties keep candidate order. Works without padding candidates to a dense grid."""
    out = torch.full((num_groups, k), -1, dtype=torch.long, device=scores.device)
    if len(scores) == 0:
        return out
    order = torch.argsort(scores, descending=True, stable=True)
    order = order[torch.argsort(groups[order], stable=True)]
    sorted_groups = groups[order]
    counts = torch.bincount(sorted_groups, minlength=num_groups)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(order), device=scores.device) - starts[sorted_groups]
    keep = rank < k
    out[sorted_groups[keep], rank[keep]] = order[keep]
    return out


def beam_search(
    step: StepFn,
    trie: ItemTrie,
    batch_size: int,
    num_beams: int,
    *,
    constrained: bool = True,
    max_steps: int | None = None,
    pad_token: int = 0,
    renormalize: bool = False,
    item_prior: torch.Tensor | None = None,
) -> BeamSearchResult:
    """Decode ``num_beams`` item sequences per batch element, best first.

    Constrained (default): only trie edges are expanded, so every finished beam is an item of ``trie``.
    Unconstrained: plain beam search over the whole vocabulary for ``max_steps`` (default: the trie depth)
    tokens; sequences that are not an item decode to item 0 (their share is the invalid-ID rate).
    """
    device = trie.edge_key.device
    max_steps = max_steps or trie.max_depth
    batch_index = torch.arange(batch_size, device=device)
    nodes = torch.zeros(batch_size, 1, dtype=torch.long, device=device)  # trie node of each beam (-1 = none)
    scores = torch.zeros(batch_size, 1, device=device)
    tokens = torch.zeros(batch_size, 1, 0, dtype=torch.long, device=device)
    if item_prior is not None and not constrained:
        raise ValueError("item_prior needs constrained decoding")
    node_prior = trie.node_log_mass(item_prior.to(device)) if item_prior is not None else None
    parents: torch.Tensor | None = None
    last: torch.Tensor | None = None
    for _ in range(max_steps):
        finished = (nodes >= 0) & (trie.num_children(nodes) == 0)
        if constrained and bool((finished | (nodes < 0)).all()):
            break
        logp = torch.log_softmax(step(parents, last).float(), dim=-1)  # [B, W, V]
        width = nodes.shape[1]
        if constrained:
            parents, last, nodes, scores = _constrained_step(
                trie, logp, nodes, scores, finished, num_beams, pad_token, renormalize, node_prior
            )
        else:
            vocab = logp.shape[-1]
            flat = (scores[..., None] + logp).reshape(batch_size, width * vocab)
            scores, index = flat.topk(min(num_beams, width * vocab), dim=-1)
            parents, last = index // vocab, index % vocab
            nodes = trie.step(nodes.gather(1, parents), last)
        tokens = torch.cat([tokens[batch_index[:, None], parents], last[..., None]], dim=-1)
    items = trie.item(nodes)
    items = torch.where(torch.isfinite(scores), items, torch.zeros_like(items))
    order = torch.argsort(scores, dim=1, descending=True, stable=True)  # unconstrained top-k is already sorted
    items, scores, tokens = items.gather(1, order), scores.gather(1, order), tokens[batch_index[:, None], order]
    if items.shape[1] < num_beams:
        pad = num_beams - items.shape[1]
        items = torch.cat([items, items.new_zeros(batch_size, pad)], dim=1)
        scores = torch.cat([scores, scores.new_full((batch_size, pad), float("-inf"))], dim=1)
        tokens = torch.cat([tokens, tokens.new_full((batch_size, pad, tokens.shape[2]), pad_token)], dim=1)
    return BeamSearchResult(items=items, scores=scores, tokens=tokens)


def _constrained_step(
    trie: ItemTrie,
    logp: torch.Tensor,
    nodes: torch.Tensor,
    scores: torch.Tensor,
    finished: torch.Tensor,
    num_beams: int,
    pad_token: int,
    renormalize: bool = False,
    node_prior: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Expand every live beam along its trie children (finished beams carry over unchanged) and keep the
    ``num_beams`` best candidates of each batch element (``renormalize``: log-probabilities over the children;
    ``node_prior`` [B, num_nodes]: each step adds the child's prior log-mass less its parent's)."""
    batch_size, width, _ = logp.shape
    flat_nodes = nodes.reshape(-1)
    live = torch.where(finished.reshape(-1), torch.full_like(flat_nodes, -1), flat_nodes)
    rows, child_tokens, children = trie.children(live)
    child_logp = logp.reshape(batch_size * width, -1)[rows, child_tokens]
    if renormalize and len(rows):
        child_logp = child_logp - group_logsumexp(rows, child_logp, batch_size * width)[rows]
    if node_prior is not None and len(rows):
        row_batch = rows // width
        child_logp = child_logp + node_prior[row_batch, children] - node_prior[row_batch, live[rows]]
    cand_score = scores.reshape(-1)[rows] + child_logp
    done_rows = torch.nonzero(finished.reshape(-1)).flatten()
    rows = torch.cat([rows, done_rows])
    cand_token = torch.cat([child_tokens, torch.full_like(done_rows, pad_token)])
    cand_node = torch.cat([children, flat_nodes[done_rows]])
    cand_score = torch.cat([cand_score, scores.reshape(-1)[done_rows]])
    cand_score = torch.where(torch.isfinite(cand_score), cand_score, torch.full_like(cand_score, float("-inf")))
    best = segment_topk(rows // width, cand_score, batch_size, num_beams)  # [B, K] candidate index or -1
    empty = best < 0
    pick = best.clamp(min=0)
    if len(rows) == 0:  # nothing to expand anywhere: every slot is empty
        zeros = torch.zeros_like(best)
        return zeros, zeros + pad_token, zeros - 1, torch.full(best.shape, float("-inf"), device=logp.device)
    parents = torch.where(empty, torch.zeros_like(pick), rows[pick] % width)
    tokens = torch.where(empty, torch.full_like(pick, pad_token), cand_token[pick])
    new_nodes = torch.where(empty, torch.full_like(pick, -1), cand_node[pick])
    new_scores = torch.where(empty, torch.full(pick.shape, float("-inf"), device=logp.device), cand_score[pick])
    return parents, tokens, new_nodes, new_scores


class RowPrefixScorer:
    """Adapts any step function to a trie whose sequences start with a per-row virtual token ``vocab_size + row``
    (:func:`zoo.modules.trie.candidate_trie`, per-row candidate sets): the first step emits row b's token with
    probability 1; the second returns the wrapped scorer's first logits for every beam (all continue the one
    virtual-token beam, hence parent 0 at the third step); logits are padded with -inf for the virtual tokens."""

    def __init__(self, step: StepFn, vocab_size: int, batch_size: int, device=None) -> None:
        self.step = step
        self.vocab_size = vocab_size
        self.batch_size = batch_size
        self.device = device
        self.calls = 0

    def _pad(self, logits: torch.Tensor) -> torch.Tensor:
        pad = logits.new_full((*logits.shape[:-1], self.batch_size), float("-inf"))
        return torch.cat([logits, pad], dim=-1)

    def __call__(self, parents: torch.Tensor | None, tokens: torch.Tensor | None) -> torch.Tensor:
        self.calls += 1
        if self.calls == 1:
            first = torch.full((self.batch_size, 1, self.vocab_size + self.batch_size), float("-inf"))
            first[torch.arange(self.batch_size), 0, self.vocab_size + torch.arange(self.batch_size)] = 0.0
            return first.to(self.device) if self.device is not None else first
        if self.calls == 2:  # the row token was "generated": each beam continues from the prompt's first logits
            logits = self.step(None, None)
            return self._pad(logits.expand(-1, parents.shape[1], -1))
        if self.calls == 3:
            parents = torch.zeros_like(parents)
        return self._pad(self.step(parents, tokens))


def candidate_beam_search(
    step: StepFn,
    sequences,
    candidates: torch.Tensor,
    vocab_size: int,
    num_beams: int,
    pad_token: int = 0,
    renormalize: bool = False,
    item_prior: torch.Tensor | None = None,
) -> BeamSearchResult:
    """Beam search restricted to each row's candidate items (``candidates`` [B, K] item ids, 0 = none):
    ``sequences[i]`` is the token sequence of item ``i`` (index 0 unused); ``renormalize`` over the allowed
    tokens, i.e. over the row's candidates, and ``item_prior`` ([B, N+1]) as in :func:`beam_search`."""
    from zoo.modules.trie import candidate_trie

    trie = candidate_trie(sequences, candidates, vocab_size).to(candidates.device)
    scorer = RowPrefixScorer(step, vocab_size, len(candidates), candidates.device)
    result = beam_search(
        scorer, trie, len(candidates), num_beams, pad_token=pad_token, renormalize=renormalize, item_prior=item_prior
    )
    return BeamSearchResult(result.items, result.scores, result.tokens[:, :, 1:])
