"""PALR (Yang et al., 2023): an LLM re-ranks a retriever's candidates.

Stage 1 (retrieval) is another model's job. By default (``model.retriever=stage``) it is the ``retriever`` stage of
``zoo.stages``: ``model.retriever_recipe`` (default ``sasrec_<dataset>``) is trained once on the same data, its
top-``model.retriever_k`` lists are exported and cached, and later runs reuse them. ``model.retriever=file`` reads
the lists of ``data.candidates_path`` instead (``zoo.data.candidates`` format); ``model.retriever=popularity``
takes the most popular items outside the user's ``data.max_len`` history window (a weak stage 1 that needs no
other run). The evaluation protocol is then "the retriever's lists": a target the retriever missed is a miss.

Stage 2: a causal LM reads an instruction prompt with the user's history (at most ``data.max_len`` titles; PALR: 20), an
optional LLM-written user profile (``model.profile_path``: the JSONL cache of ``zoo.llm_text``, keyed by raw user
id) and, for the retrieval task, the candidate titles, and generates the title of the recommended item. Training
mixes the paper's two instruction tasks per example (a seeded draw, the same every epoch):

* ``Recommend``: history (+ profile) -> the next item, no candidates;
* ``Recommend_Retrieval``: history (+ profile) + candidates -> the next item, where the candidates are the
  retriever's list with the target inserted at a random position (the other items are hard negatives).

Evaluation poses the retrieval task with the retriever's list as it is (a target the retriever missed is a miss)
and decodes by beam search constrained to each user's candidates (one trie per batch, each row's candidates
under its own virtual root token: ``TitleTrie.candidate_trie``). The loss is any token loss (``lml``, ``msl``,
``msl_ats``; MSL's valid sets come from the title trie of all items).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from zoo.data.datamodule import DataSpec
from zoo.data.prompts import ALPACA, PromptFrame, PromptTokens
from zoo.errors import ConfigError, DataError
from zoo.llm_text import TextCache
from zoo.models.llm_rec import LLMRec, LLMRecConfig, encode_prompts
from zoo.modules.title_trie import TitleTrie
from zoo.registry import MODELS

RETRIEVERS = ("stage", "file", "popularity")
RETRIEVAL_INSTRUCTION = " Choose the answer from the candidates."


@dataclass
class PALRConfig(LLMRecConfig):
    name: str = "palr"
    max_prompt_tokens: int = 1024  # history titles are dropped (oldest first) beyond this; candidates never
    retriever: str = "stage"  # stage: train retriever_recipe | file: data.candidates_path | popularity
    retriever_recipe: Optional[str] = None  # the stage's recipe (default sasrec_<data.name>)
    retriever_overrides: list[str] = field(default_factory=list)  # dotted overrides of that recipe
    retriever_k: int = 50  # candidates the stage exports per user
    num_candidates: int = 50  # candidates shown (the first of the retriever's list)
    retrieval_task_ratio: float = 0.5  # share of training examples posed as Recommend_Retrieval
    profile_path: Optional[str] = None  # JSONL user profiles from zoo.llm_text (key = raw user id)
    task_seed: int = 0  # seeds the per-example task draw and the target's position among the candidates


def load_profiles(path: str | Path, user_ids: list[str]) -> list[str]:
    """Profile text per user index from a ``zoo.llm_text`` JSONL cache ("" for users without one)."""
    if not Path(path).is_file():
        raise DataError(f"model.profile_path: no file at {path}")
    cache = TextCache(path)
    return [cache.get(u) or "" for u in user_ids]


class PALRPromptEncoder:
    """Batch transform: the training prompt of each example's task (with ``labels``) and the evaluation prompt
    (retrieval over the retriever's list as it is, in ``prompt_ids``), plus ``candidates`` [B, n]."""

    def __init__(
        self,
        prompts: PromptTokens,
        titles: TitleTrie,
        instruction_and_prefix: tuple[str, str],
        cfg: PALRConfig,
        pad_id: int,
        profiles: list[str] | None,
        popular: np.ndarray | None,
        frame: PromptFrame = ALPACA,
    ) -> None:
        instruction, history_prefix = instruction_and_prefix
        self.prompts = prompts
        self.titles = titles
        self.cfg = cfg
        self.pad_id = pad_id
        self.popular = popular
        self.heads = {
            task: prompts.text(frame.head(instruction + extra))
            for task, extra in (("recommend", ""), ("retrieval", RETRIEVAL_INSTRUCTION))
        }
        self.history_prefix = prompts.text(history_prefix)
        self.candidates_prefix = prompts.text("\nCandidates: ")
        self.tail = prompts.text(frame.closing)
        self.profiles = [prompts.text(f"User profile: {p}\n") if p else [] for p in profiles] if profiles else None

    def _prompt(self, task: str, user: int, history: list[int], candidates: list[int] | None) -> list[int]:
        head = self.heads[task] + (self.profiles[user] if self.profiles and user >= 0 else []) + self.history_prefix
        tail = (self.candidates_prefix + self.prompts.title_list(candidates) if candidates else []) + self.tail
        return self.prompts.fit_history(head, history, tail)

    def _candidates(self, batch: dict) -> torch.Tensor:
        n = self.cfg.num_candidates
        if self.popular is None:
            if "candidates" not in batch:
                raise DataError("palr: this split has no candidate lists in data.candidates_path")
            return batch["candidates"][:, :n]
        rows = []
        for history in batch["history"].tolist():
            seen = set(history)
            row = [i for i in self.popular[: n + len(seen)].tolist() if i not in seen][:n]
            rows.append(row + [0] * (n - len(row)))  # a small catalogue may have fewer unseen items
        return torch.tensor(rows, dtype=torch.long)

    def __call__(self, batch: dict) -> dict:
        candidates = self._candidates(batch)
        train_prompts, eval_prompts = [], []
        rows = zip(batch["user"].tolist(), batch["history"].tolist(), batch["target"].tolist(), candidates.tolist())
        for user, history, target, cands in rows:
            cands = [c for c in cands if c > 0]
            rng = np.random.default_rng((self.cfg.task_seed, max(user, 0), target, len([i for i in history if i])))
            if rng.random() < self.cfg.retrieval_task_ratio:
                negatives = [c for c in cands if c != target][: max(len(cands) - 1, 0)]
                at = int(rng.integers(0, len(negatives) + 1))
                train_prompts.append(
                    self._prompt("retrieval", user, history, negatives[:at] + [target] + negatives[at:])
                )
            else:
                train_prompts.append(self._prompt("recommend", user, history, None))
            eval_prompts.append(self._prompt("retrieval", user, history, cands))
        batch = encode_prompts(batch, train_prompts, self.titles, self.pad_id, eval_prompts)
        batch["candidates"] = candidates
        return batch


@MODELS.register("palr")
class PALR(LLMRec):
    Config = PALRConfig
    test_overrides = (  # the retriever stage with a SASRec of two training batches
        "model.num_candidates=10",
        "model.retriever_k=10",
        "model.retriever_overrides=[trainer.max_epochs=1,trainer.limit_train_batches=2,trainer.limit_val_batches=1,"
        "trainer.limit_test_batches=1,trainer.enable_progress_bar=false,logger.name=none]",
    )

    @classmethod
    def stages_for(cls, cfg) -> tuple[str, ...]:
        return ("retriever",) if cfg.model.retriever == "stage" else ()

    @classmethod
    def protocol_for(cls, cfg, protocol, artifacts):
        """PALR ranks its retriever's lists: the stage's candidates file under ``model.retriever=stage``."""
        from zoo.evaluation import Protocol

        if cfg.model.retriever != "stage":
            return protocol
        if protocol.candidates != "full":
            raise ConfigError(
                "palr with model.retriever=stage ranks the stage's candidates: leave data.eval_candidates and "
                "data.candidates_path unset (or use model.retriever=file)"
            )
        path = str(artifacts["retriever"].file("candidates.npz"))
        return Protocol("retriever", 0, path, protocol.mask_seen)

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        m = cfg.model
        if m.retriever not in RETRIEVERS:
            raise ConfigError(f"unknown model.retriever '{m.retriever}' ({' | '.join(RETRIEVERS)})")
        if m.retriever == "file" and not cfg.data.candidates_path:  # (stage: build sets it from the stage)
            raise ConfigError(
                "palr with model.retriever=file needs data.candidates_path=<retriever run>/candidates.npz "
                "(e.g. python -m zoo.run recipe=sasrec_ml100k model.export_candidates_k=50), "
                "or model.retriever=popularity"
            )
        if not 0.0 <= m.retrieval_task_ratio <= 1.0:
            raise ConfigError(f"model.retrieval_task_ratio must be in [0, 1], got {m.retrieval_task_ratio}")
        if m.num_candidates < 1:
            raise ConfigError(f"model.num_candidates must be >= 1, got {m.num_candidates}")

    def __init__(self, cfg, datamodule, artifacts: dict | None = None) -> None:
        super().__init__(cfg, datamodule, artifacts)
        m = cfg.model
        corpus = datamodule.corpus
        self._profiles = load_profiles(m.profile_path, corpus.user_ids) if m.profile_path else None
        self._popular = None
        if m.retriever == "popularity":
            counts = datamodule.train_item_counts("val").astype(np.float64)
            counts[0] = -1.0
            self._popular = np.argsort(-counts, kind="stable")[:-1]

    def data_spec(self) -> DataSpec:
        encoder = PALRPromptEncoder(
            self.prompts,
            self.titles,
            self._instruction(),
            self.cfg.model,
            self.backbone.pad_token_id,
            self._profiles,
            self._popular,
            frame=self.frame,
        )
        return DataSpec(train_mode="prefix", transform=encoder)

    def rank(self, batch: dict, k: int, candidates: torch.Tensor | None = None) -> torch.Tensor:
        """The candidates re-ranked: beam search constrained to each row's candidate titles ([B, k])."""
        return super().rank(batch, k, batch["candidates"] if candidates is None else candidates)

    def rank_scored(self, batch: dict, k: int, candidates: torch.Tensor | None = None):
        return super().rank_scored(batch, k, batch["candidates"] if candidates is None else candidates)
