"""One evaluation protocol for every task family, and the evaluators that apply it.

:class:`Protocol` is the single object that says how a test is run (``docs/protocol.md`` gives the rules):

* **candidates**: ``full`` ranks the whole catalogue; ``sampled`` ranks the target against ``n - 1`` items the
  user never interacted with (``data.eval_candidates=n``, drawn with a fixed seed, the same lists for every
  method); ``retriever`` ranks a retriever's lists (``data.candidates_path``, or a stage such as PALR's SASRec
  top-K). A target missing from a retriever's list is a miss.
* **mask_seen** (``eval.mask_seen``): items the user interacted with before the target are removed from the
  ranking (the target itself never is), the whole history, not only the window a model reads.

The DataModule puts what the protocol needs into every evaluation batch (``candidates`` [B, n] item ids, with the
seen ones zeroed under ``mask_seen``; ``seen`` [B, S] item ids), and :class:`RankingEvaluator` turns a model's
output into target ranks under it:

* a **sequential** model (scores) is ranked among the candidates, or over all items with seen items masked;
* a **generative** model (ranked lists) is asked for lists restricted to the candidates (``rank(batch, k,
  candidates=...)``; a model that cannot restrict its decoding declares ``supports_candidates = False`` and the
  builder refuses the protocol with one line), and under ``mask_seen`` for ``k`` + (number of seen items) ids,
  from which the seen ones are dropped. The evaluator checks that a list holds only candidates.

An oracle scoring model and an oracle generative model that rank by the same scores get identical metrics under
every protocol (``tests/test_protocol.py``). CTR models are evaluated on labelled pairs by :class:`CTREvaluator`
(AUC, LogLoss); the ranking protocol does not apply to them and the builder says so if one is set.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from zoo.errors import ConfigError
from zoo.metrics import MISS, CTRMetrics, GenerationMetrics, RankingMetrics, ranks_from_lists, sampled_ranks
from zoo.metrics.chunked import chunked_target_ranks
from zoo.metrics.ranking import distinct_seen, target_ranks

CANDIDATE_MODES = ("full", "sampled", "retriever")


@dataclass(frozen=True)
class Protocol:
    candidates: str = "full"  # full | sampled | retriever
    num_candidates: int = 0  # list size under "sampled" (target included)
    candidates_path: str | None = None  # the retriever's lists under "retriever" (None: the model's own retriever)
    mask_seen: bool = False

    def __post_init__(self) -> None:
        if self.candidates not in CANDIDATE_MODES:
            raise ConfigError(f"unknown candidate mode '{self.candidates}' ({' | '.join(CANDIDATE_MODES)})")
        if self.candidates == "sampled" and self.num_candidates < 1:
            raise ConfigError(f"data.eval_candidates={self.num_candidates}: expected a list size >= 1")

    @classmethod
    def from_config(cls, cfg) -> Protocol:
        """The protocol of a composed config (``data.eval_candidates``, ``data.candidates_path``,
        ``eval.mask_seen``)."""
        sampled = int(cfg.data.eval_candidates or 0)
        path = cfg.data.candidates_path
        if sampled and path:
            raise ConfigError("data.eval_candidates and data.candidates_path both set: choose one candidate source")
        if sampled < 0:
            raise ConfigError(f"data.eval_candidates={sampled}: expected 0 (full ranking) or a list size >= 1")
        if sampled:
            return cls("sampled", sampled, None, bool(cfg.eval.mask_seen))
        if path:
            return cls("retriever", 0, str(path), bool(cfg.eval.mask_seen))
        return cls("full", 0, None, bool(cfg.eval.mask_seen))

    def describe(self) -> str:
        what = {"full": "full ranking", "sampled": f"1 target + {self.num_candidates - 1} sampled negatives"}
        text = what.get(self.candidates, f"retriever lists ({self.candidates_path or 'the model retriever'})")
        return text + (", seen items masked" if self.mask_seen else "")


def unique_ids(ids: torch.Tensor) -> torch.Tensor:
    """``ids`` ([B, L]) with every repeat of an id within its row replaced by 0 (the first one stays)."""
    ordered, order = ids.sort(dim=1, stable=True)
    repeat = torch.zeros_like(ids, dtype=torch.bool)
    repeat[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
    back = torch.empty_like(repeat).scatter_(1, order, repeat)
    return ids.masked_fill(back, 0)


def drop_items(ranked: torch.Tensor, drop: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """``ranked`` ([B, L] ids) with the ids of ``drop`` ([B, S], 0 = none) removed and the rest moved up, in order
    (0 fills the end). Ids equal to ``keep`` ([B]) are never dropped."""
    hit = (ranked[:, :, None] == drop[:, None, :]).any(dim=2) & (ranked != 0)
    if keep is not None:
        hit &= ranked != keep.view(-1, 1)
    order = torch.argsort(hit.to(torch.int8), dim=1, stable=True)
    return torch.where(hit.gather(1, order), torch.zeros_like(ranked), ranked.gather(1, order))


class RankingEvaluator(nn.Module):
    """Ranks of the targets of a sequential or generative model under the protocol, accumulated as
    :class:`RankingMetrics` (+ :class:`GenerationMetrics` of the ranked lists for generative models)."""

    def __init__(self, model, ks: tuple[int, ...]) -> None:
        super().__init__()
        self.ks = ks
        self.kept: list[torch.Tensor] | None = None
        self.ranking = RankingMetrics(ks)
        self.generative = model.task == "generative"
        if self.generative:
            self.generation = GenerationMetrics(model.num_items)

    def ranks(self, model, batch: dict) -> torch.Tensor:
        if self.generative:
            return self._generative_ranks(model, batch)
        return scoring_ranks(model, batch, max(self.ks))

    def _generative_ranks(self, model, batch: dict) -> torch.Tensor:
        targets, candidates, seen = batch["target"], batch.get("candidates"), batch.get("seen")
        k = max(max(self.ks), int(model.cfg.eval.num_beams))
        if candidates is not None:
            ranked = model.rank(batch, k, candidates=candidates)
            outside = (ranked[:, :, None] != candidates[:, None, :]).all(dim=2) & (ranked != 0)
            if bool(outside.any()):
                raise RuntimeError(f"{type(model).__name__}.rank returned items outside the candidate lists")
        else:
            # the seen items other than the target are dropped from the list: decode that many more
            extra = int(distinct_seen(seen.long(), targets).sum(dim=1).max()) if seen is not None and len(seen) else 0
            ranked = model.rank(batch, k + extra)
            if seen is not None:
                ranked = drop_items(ranked, seen, keep=targets)[:, :k]
        self.generation.update(ranked)
        return ranks_from_lists(ranked, targets)

    def update(self, model, batch: dict) -> None:
        ranks = self.ranks(model, batch)
        self.ranking.update(ranks)
        if self.kept is not None:  # per-example ranks, for paired bootstrap intervals (eval.save_ranks)
            self.kept.append(torch.stack([batch["user"].cpu(), batch["target"].cpu(), ranks.cpu()], dim=1))

    def keep_ranks(self) -> None:
        self.kept = []

    def compute(self) -> dict[str, torch.Tensor]:
        values = dict(self.ranking.compute())
        if self.generative:
            values.update(self.generation.compute())
        return values

    def reset(self) -> None:
        self.ranking.reset()
        if self.generative:
            self.generation.reset()


def scoring_ranks(model, batch: dict, max_k: int) -> torch.Tensor:
    """Target ranks of a scoring model (``user_state`` + ``score_state``) under the protocol of ``batch``."""
    targets, candidates, seen = batch["target"], batch.get("candidates"), batch.get("seen")
    if candidates is not None:
        candidates = unique_ids(candidates)  # a retriever's list may repeat an item: it is one item
        state = model.user_state(batch)
        scores = model.score_state(state, 0, model.num_items + 1)
        with_target = torch.cat([targets.view(-1, 1), candidates], dim=1)
        ranks = sampled_ranks(scores.gather(1, with_target), with_target)
        present = (candidates == targets.view(-1, 1)).any(dim=1)
        return torch.where(present, ranks, torch.full_like(ranks, MISS))
    chunk = int(model.cfg.eval.item_chunk_size)
    if chunk and chunk < model.num_items:
        state = model.user_state(batch)
        return chunked_target_ranks(
            lambda s, e: model.score_state(state, s, e), targets, model.num_items, chunk, max_k, seen
        )
    return target_ranks(model.score_state(model.user_state(batch), 0, model.num_items + 1), targets, seen)


class CTREvaluator(nn.Module):
    """AUC and LogLoss of a CTR model's logits (``predict(batch)`` [B]), and GAUC (impression-weighted mean of the
    per-user AUCs, over users with both labels) under the users split (``data.ctr_split=users``). GAUC is left out
    under the per-user leave-one-out split: each user has one validation and one test impression, so no user has
    an AUC."""

    def __init__(self, model, ks: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.ctr = CTRMetrics(from_logits=True)
        cfg = getattr(model, "cfg", None)
        self.grouped = cfg is not None and str(getattr(cfg.data, "ctr_split", "leave_one_out")) == "users"

    def update(self, model, batch: dict) -> None:
        users = batch["user"] if self.grouped else None
        self.ctr.update(model.predict(batch).float(), batch["label"], users)

    def compute(self) -> dict[str, torch.Tensor]:
        return dict(self.ctr.compute())

    def reset(self) -> None:
        self.ctr.reset()
