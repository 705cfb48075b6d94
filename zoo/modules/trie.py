"""A prefix trie over item token sequences (Semantic IDs, tokenised titles) stored as flat tensors.

One structure serves training and inference:

* MSL's valid next-token sets V_t along the ground-truth path (``walk`` + ``children``), computed on the fly per
  batch, never stored as a dense positions x vocabulary mask;
* constrained beam search (``allowed_mask`` / ``step``), so that every decoded sequence is a real item;
* mapping a complete sequence back to its item (``item``).

Nodes are integers (0 = root); edges are kept sorted by ``parent * vocab + token`` so a batch of transitions is
one ``searchsorted``. Children of a node are contiguous (CSR), so gathering V_t for thousands of positions is a
few tensor ops.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def group_logsumexp(groups: torch.Tensor, values: torch.Tensor, num_groups: int) -> torch.Tensor:
    """logsumexp of ``values`` ([..., P]) within each group id of ``groups`` ([P], along the last dimension):
    [..., num_groups], -inf for a group with no value."""
    index = groups.expand(*values.shape[:-1], -1)
    top = values.new_full((*values.shape[:-1], num_groups), float("-inf")).scatter_reduce(-1, index, values, "amax")
    shift = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    total = torch.zeros_like(top).scatter_add_(-1, index, torch.exp(values - shift.gather(-1, index)))
    return torch.log(total) + shift


class ItemTrie:
    def __init__(self, sequences: Sequence[Sequence[int]], items: Sequence[int] | None = None, vocab_size: int = 0):
        """``sequences[i]`` is the token sequence of item ``items[i]`` (default: i + 1). Two items with the same
        sequence share a leaf: the first one keeps it and ``duplicates`` counts the others."""
        items = list(items) if items is not None else list(range(1, len(sequences) + 1))
        if len(items) != len(sequences):
            raise ValueError(f"{len(sequences)} sequences for {len(items)} items")
        max_token = max((max(s) for s in sequences if len(s)), default=-1)
        self.vocab_size = max(int(vocab_size), max_token + 1)
        children: list[dict[int, int]] = [{}]
        leaf_item: dict[int, int] = {}
        self.duplicates = 0
        self.max_depth = 0
        for seq, item in zip(sequences, items):
            node = 0
            for tok in seq:
                nxt = children[node].get(int(tok))
                if nxt is None:
                    nxt = len(children)
                    children[node][int(tok)] = nxt
                    children.append({})
                node = nxt
            self.max_depth = max(self.max_depth, len(seq))
            if node in leaf_item:
                self.duplicates += 1
            else:
                leaf_item[node] = int(item)
        self.num_nodes = len(children)
        parents, tokens, kids = [], [], []
        for parent, edges in enumerate(children):
            for tok in sorted(edges):
                parents.append(parent)
                tokens.append(tok)
                kids.append(edges[tok])
        parents_t = torch.tensor(parents, dtype=torch.long)
        self.edge_key = parents_t * self.vocab_size + torch.tensor(tokens, dtype=torch.long)  # sorted
        self.edge_token = torch.tensor(tokens, dtype=torch.long)
        self.edge_child = torch.tensor(kids, dtype=torch.long)
        counts = torch.bincount(parents_t, minlength=self.num_nodes)
        self.child_offsets = torch.zeros(self.num_nodes + 1, dtype=torch.long)
        self.child_offsets[1:] = torch.cumsum(counts, 0)
        self.node_item = torch.zeros(self.num_nodes, dtype=torch.long)
        for node, item in leaf_item.items():
            self.node_item[node] = item
        self.num_items = len(leaf_item)

    def to(self, device) -> ItemTrie:
        for name in ("edge_key", "edge_token", "edge_child", "child_offsets", "node_item"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    # -- batched queries (all tensors on the trie's device) -----------------------------------------------
    def step(self, nodes: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Child of each node along each token; -1 where the token is not allowed (or the node is -1)."""
        keys = nodes.clamp(min=0) * self.vocab_size + tokens.clamp(min=0, max=self.vocab_size - 1)
        pos = torch.searchsorted(self.edge_key, keys).clamp(max=max(len(self.edge_key) - 1, 0))
        found = (self.edge_key[pos] == keys) & (nodes >= 0) & (tokens >= 0) & (tokens < self.vocab_size)
        return torch.where(found, self.edge_child[pos], torch.full_like(nodes, -1))

    def walk(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Nodes *before* each position when following ``tokens`` ([B, T]) from the root: out[:, t] is the node
        whose children are the valid choices for tokens[:, t]. Positions where ``mask`` is False do not advance
        (use it for padding or prompt tokens before the item sequence starts)."""
        batch, length = tokens.shape
        out = torch.empty_like(tokens)
        node = torch.zeros(batch, dtype=torch.long, device=tokens.device)
        for t in range(length):
            out[:, t] = node
            nxt = self.step(node, tokens[:, t])
            node = nxt if mask is None else torch.where(mask[:, t], nxt, node)
        return out

    def num_children(self, nodes: torch.Tensor) -> torch.Tensor:
        n = nodes.clamp(min=0)
        return torch.where(nodes >= 0, self.child_offsets[n + 1] - self.child_offsets[n], torch.zeros_like(nodes))

    def children(self, nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Flat (row, token, child) triples of every child of every node in ``nodes`` ([P]); row indexes nodes."""
        counts = self.num_children(nodes)
        rows = torch.repeat_interleave(torch.arange(len(nodes), device=nodes.device), counts)
        starts = self.child_offsets[nodes.clamp(min=0)]
        first = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        edge = starts[rows] + torch.arange(len(rows), device=nodes.device) - first
        return rows, self.edge_token[edge], self.edge_child[edge]

    def allowed_mask(self, nodes: torch.Tensor, vocab_size: int | None = None) -> torch.Tensor:
        """Boolean [P, V]: which tokens may follow each node."""
        rows, tokens, _ = self.children(nodes)
        mask = torch.zeros(len(nodes), vocab_size or self.vocab_size, dtype=torch.bool, device=nodes.device)
        mask[rows, tokens] = True
        return mask

    def item(self, nodes: torch.Tensor) -> torch.Tensor:
        """Item id whose sequence ends at each node (0 if none)."""
        return torch.where(nodes >= 0, self.node_item[nodes.clamp(min=0)], torch.zeros_like(nodes))

    def ancestor_pairs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(nodes, items)`` [P]: every (node, item) pair where ``node`` is on the path from the root to the item's
        leaf (root and leaf included), for the items that own a leaf. Built once and cached."""
        cached = getattr(self, "_ancestor_pairs", None)
        if cached is not None and cached[0].device == self.node_item.device:
            return cached
        device = self.node_item.device
        parent = torch.full((self.num_nodes,), -1, dtype=torch.long, device=device)
        parent[self.edge_child] = torch.div(self.edge_key, self.vocab_size, rounding_mode="floor")
        node = torch.nonzero(self.node_item > 0).flatten()
        item = self.node_item[node]
        nodes, items = [], []
        while len(node):
            nodes.append(node)
            items.append(item)
            up = parent[node]
            keep = up >= 0
            node, item = up[keep], item[keep]
        self._ancestor_pairs = (torch.cat(nodes), torch.cat(items)) if nodes else (node, item)
        return self._ancestor_pairs

    def node_log_mass(self, item_scores: torch.Tensor) -> torch.Tensor:
        """Per-row log-mass of every node's subtree ([B, num_nodes]): the logsumexp of ``item_scores`` ([B, N+1]
        per-item log-weights, column i = item i) over the items below the node; -inf where none is finite. A leaf
        holds its item's score, so adding ``mass[child] - mass[node]`` at each step of a path adds exactly the
        item's score at its end (a lookahead prior for beam search)."""
        nodes, items = self.ancestor_pairs()
        return group_logsumexp(nodes, item_scores[:, items].float(), self.num_nodes)


def candidate_trie(sequences, candidates: torch.Tensor, vocab_size: int) -> ItemTrie:
    """One trie for a batch of per-row candidate sets ([B, K] item ids, 0 = none; ``sequences[i]`` is item i's
    token sequence), so that beam search over row b can only produce row b's candidates: every sequence is
    prefixed with a virtual token ``vocab_size + b`` that the model never produces (see
    ``zoo.modules.beam_search.RowPrefixScorer``)."""
    rows, items = [], []
    for b, row in enumerate(candidates.tolist()):
        for item in dict.fromkeys(i for i in row if i > 0):
            rows.append(b)
            items.append(item)
    prefixed = [[vocab_size + b, *sequences[i]] for b, i in zip(rows, items)]
    return ItemTrie(prefixed, items, vocab_size=vocab_size + len(candidates))
