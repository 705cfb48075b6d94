"""Masked Softmax Loss (MSL, Wang et al. SIGIR 2025) and its adaptive temperature (ATS): token losses for LLM
recommenders whose targets are item token sequences (titles, Semantic IDs).

At a labelled position t, following the ground-truth prefix in the model's item trie, V_t is the set of tokens
the trie allows next. The loss there is ``-z_y / tau + log sum_{v in V_t} exp(z_v / tau)``; positions with
|V_t| <= 1 carry no choice and are dropped; the loss is the mean over kept positions times tau.

V_t is computed on the fly from the trie (``connect(trie=...)``): the trie is walked along the labels and the
valid logits are gathered as a flat list of (position, token) pairs -- never a dense positions x vocabulary mask.
The labelled tokens of a row are one or more complete item sequences back to back (the walk starts at the trie
root and returns to it after each completed item), so a model may pass [B, T] padded rows (-100 elsewhere) or
all response positions flattened into one row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist

from zoo.losses.base import Loss, LossConfig
from zoo.modules.trie import ItemTrie
from zoo.registry import LOSSES


@dataclass
class MSLConfig(LossConfig):
    tau: float = 4.5  # fixed temperature (the paper's choice for fixed-tau MSL)


@dataclass
class ATSConfig(LossConfig):
    tau_init: float = 1.5  # starting temperature, also the fixed one during warm-up
    tau_min: float = 1.5
    tau_max: float = 5.0
    eta: float = 0.25  # C = ln(eta * N1)
    alpha: float = 0.05  # EMA rate: tau <- (1 - alpha) tau + alpha tau_hat
    warmup_steps: int = 0  # training steps at tau_init before adapting


@dataclass
class ValidLogits:
    """Kept positions and their valid logits, flat: ``values[e]`` is the logit of token e of position ``rows[e]``."""

    target: torch.Tensor  # [P] logit of the label at each kept position
    rows: torch.Tensor  # [E] position index of each valid token
    values: torch.Tensor  # [E] its logit
    at_first_choice: torch.Tensor  # [P] bool: the position is the first choice of an item sequence


def first_choice_node(trie: ItemTrie) -> int:
    """The first trie node with more than one child, following single-child links from the root: where the
    first *title* token is chosen. (With a tokenizer that splits off the opening quote, every title starts with
    the same token, so the root itself has one child and no choice.)"""
    node = torch.zeros(1, dtype=torch.long, device=trie.edge_key.device)
    while int(trie.num_children(node)[0]) == 1 and int(trie.item(node)[0]) == 0:
        _, _, child = trie.children(node)
        node = child
    return int(node[0])


def walk_items(trie: ItemTrie, labels: torch.Tensor, labelled: torch.Tensor) -> torch.Tensor:
    """Trie node before each position ([B, T]) following the labelled tokens; back at the root after a token that
    completes an item (a node with an item and no children). Unlabelled positions do not advance."""
    out = torch.empty_like(labels)
    node = torch.zeros(labels.shape[0], dtype=torch.long, device=labels.device)
    for t in range(labels.shape[1]):
        out[:, t] = node
        nxt = trie.step(node, labels[:, t])
        complete = (trie.item(nxt) > 0) & (trie.num_children(nxt) == 0)
        node = torch.where(labelled[:, t], torch.where(complete, torch.zeros_like(nxt), nxt), node)
    return out


def valid_logits(trie: ItemTrie, logits: torch.Tensor, labels: torch.Tensor, first_node: int = 0) -> ValidLogits:
    """Gather the logits of every trie-valid next token at the labelled positions with more than one choice
    (``first_node``: see ``first_choice_node``)."""
    trie.to(labels.device)
    labelled = labels != -100
    nodes = walk_items(trie, labels, labelled)
    flat_pos = torch.nonzero(labelled.flatten(), as_tuple=True)[0]
    nodes = nodes.flatten()[flat_pos]
    tokens = labels.flatten()[flat_pos]
    if bool((trie.step(nodes, tokens) < 0).any()):
        raise ValueError("MSL: a labelled token is not a valid trie continuation (labels do not follow the item trie)")
    keep = trie.num_children(nodes) > 1
    flat_pos, nodes, tokens = flat_pos[keep], nodes[keep], tokens[keep]
    flat_logits = logits.reshape(-1, logits.shape[-1])
    rows, valid_tokens, _ = trie.children(nodes)
    return ValidLogits(
        target=flat_logits[flat_pos, tokens].float(),
        rows=rows,
        values=flat_logits[flat_pos[rows], valid_tokens].float(),
        at_first_choice=nodes == first_node,
    )


def masked_softmax_loss(v: ValidLogits, tau: float | torch.Tensor) -> torch.Tensor:
    """``tau * mean_t(-z_y/tau + logsumexp_{V_t}(z/tau))`` over the kept positions (0 when there are none)."""
    count = len(v.target)
    if count == 0:
        return v.values.sum() * 0.0
    scaled = v.values / tau
    row_max = torch.full((count,), -math.inf, device=scaled.device).scatter_reduce(
        0, v.rows, scaled.detach(), reduce="amax"
    )
    sums = torch.zeros(count, device=scaled.device).index_add(0, v.rows, torch.exp(scaled - row_max[v.rows]))
    log_partition = row_max + torch.log(sums)
    return tau * (log_partition - v.target / tau).mean()


class _TrieLoss(Loss):
    kind = "token"

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.trie: ItemTrie | None = None
        self.first_node = 0

    def connect(self, trie: ItemTrie | None = None, **context) -> None:
        """Receive the model's item trie (the valid-token sets V_t come from it)."""
        if trie is not None:
            self.trie = trie
            self.first_node = first_choice_node(trie)

    def _valid(self, logits: torch.Tensor, labels: torch.Tensor) -> ValidLogits:
        if self.trie is None:
            raise RuntimeError(f"loss '{self.cfg.name}' needs the model's item trie: call loss.connect(trie=...)")
        return valid_logits(self.trie, logits, labels, self.first_node)


@LOSSES.register("msl")
class MaskedSoftmaxLoss(_TrieLoss):
    """MSL with a fixed temperature ``tau``."""

    Config = MSLConfig

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return masked_softmax_loss(self._valid(logits, labels), float(self.cfg.tau))


@LOSSES.register("msl_ats")
class AdaptiveTemperatureMSL(_TrieLoss):
    """MSL with the adaptive temperature of the paper (ATS).

    Each training step, over the first-title-token positions only (V_t = the N1 children of the first branching
    trie node, see ``first_choice_node``), with
    the statistics gathered across DDP ranks: mu_pos = mean target logit, mu_neg and sigma^2 = mean and
    (unbiased) variance of all valid logits there. Delta = mu_pos - mu_neg, C = ln(eta * N1),
    tau_hat = (Delta + sqrt(max(Delta^2 - 2 C sigma^2, 0))) / (2 C), clamped to [tau_min, tau_max], detached;
    tau <- (1 - alpha) tau + alpha tau_hat, and the step's loss uses the updated tau. During the first
    ``warmup_steps`` training steps tau stays at ``tau_init``. ``tau`` is a buffer, so it is checkpointed. When
    C <= 0 (eta * N1 <= 1: too few first tokens for the derivation) tau is left unchanged.
    """

    Config = ATSConfig

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.register_buffer("tau", torch.tensor(float(cfg.tau_init)))
        self.register_buffer("steps", torch.tensor(0, dtype=torch.long))

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        valid = self._valid(logits, labels)
        if self.training:
            self._update_tau(valid)
        return masked_softmax_loss(valid, self.tau.detach())

    @torch.no_grad()
    def _update_tau(self, v: ValidLogits) -> None:
        self.steps += 1
        if self.steps <= self.cfg.warmup_steps:
            self.tau.fill_(self.cfg.tau_init)
            return
        stats = first_choice_statistics(v)
        first_choices = int(self.trie.num_children(torch.tensor([self.first_node], device=v.rows.device))[0])
        tau_hat = adaptive_tau(stats, first_choices, self.cfg)
        if tau_hat is not None:
            self.tau.mul_(1 - self.cfg.alpha).add_(self.cfg.alpha * tau_hat)


def first_choice_statistics(v: ValidLogits) -> torch.Tensor:
    """Sufficient statistics of the first-token positions, summed over DDP ranks: [n_pos, sum target logits,
    n_valid, sum valid logits, sum squared valid logits] (float64; gathering them is exact, unlike gathering
    and averaging per-rank means)."""
    roots = v.at_first_choice
    valid = v.values.detach()[roots[v.rows]].double()
    target = v.target.detach()[roots].double()
    stats = torch.stack(
        [
            torch.tensor(float(len(target)), dtype=torch.float64, device=valid.device),
            target.sum(),
            torch.tensor(float(len(valid)), dtype=torch.float64, device=valid.device),
            valid.sum(),
            (valid * valid).sum(),
        ]
    )
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        gathered = [torch.zeros_like(stats) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, stats)
        stats = torch.stack(gathered).sum(0)
    return stats


def adaptive_tau(stats: torch.Tensor, first_token_choices: int, cfg) -> float | None:
    """tau_hat of ATS from the statistics of ``first_choice_statistics``, clamped to [tau_min, tau_max]; None when
    it is undefined (no first-token position in the step, or C = ln(eta * N1) <= 0)."""
    n_pos, sum_pos, n_val, sum_val, sumsq_val = (float(x) for x in stats)
    c = math.log(cfg.eta * first_token_choices) if first_token_choices > 0 else 0.0
    if n_pos == 0 or n_val < 2 or c <= 0:
        return None
    mu_pos = sum_pos / n_pos
    mu_neg = sum_val / n_val
    var = max((sumsq_val - n_val * mu_neg * mu_neg) / (n_val - 1), 0.0)
    delta = mu_pos - mu_neg
    tau_hat = (delta + math.sqrt(max(delta * delta - 2 * c * var, 0.0))) / (2 * c)
    return min(max(tau_hat, cfg.tau_min), cfg.tau_max)
