"""PALR against a candidates file written in the test (the SASRec export format, ``model.retriever=file``): the two
instruction tasks, the evaluation prompt, generation constrained to each user's candidates, and a tiny model that
learns to pick."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_llm_rec import cycle_corpus

from zoo.build import build
from zoo.config import compose
from zoo.data import SequentialDataModule
from zoo.data.candidates import save_candidates
from zoo.errors import ConfigError, DataError

NUM_ITEMS = 8


def write_candidates(path, corpus, size: int = 4, seed: int = 0, with_target: bool = True):
    """Per split and user: ``size`` distinct items; the split's target among them when ``with_target``."""
    rng = np.random.default_rng(seed)
    dm = SequentialDataModule(compose("palr_ml100k").data, corpus=corpus)
    lists = {}
    for split in ("train", "val", "test"):
        ex = dm.examples("val" if split == "train" else split)
        rows = []
        for target in ex.target.tolist():
            others = rng.permutation([i for i in range(1, NUM_ITEMS + 1) if i != target]).tolist()
            row = others[: size - 1] + [target] if with_target else others[:size]
            rows.append(rng.permutation(row).tolist())
        lists[split] = (ex.user, np.array(rows))
    save_candidates(path, lists)
    return path


def palr(tmp_path, *overrides, corpus=None):
    corpus = corpus or cycle_corpus(NUM_ITEMS)
    path = write_candidates(tmp_path / "candidates.npz", corpus)
    cfg = compose(
        "palr_ml100k",
        [
            "seed=0",
            "model.retriever=file",
            f"data.candidates_path={path}",
            "data.batch_size=16",
            "data.max_len=3",
            "model.tiny_hidden=32",
            "model.tiny_heads=2",
            "model.num_candidates=4",
            "eval.num_beams=4",
            "eval.ks=[1,4]",
            *overrides,
        ],
    )
    return build(cfg, corpus=corpus)


def decoded(model, ids, mask) -> str:
    return model.backbone.tokenizer.decode(ids[mask.bool()])


def test_tasks_and_evaluation_prompt(tmp_path) -> None:
    model, dm = palr(tmp_path, "model.retrieval_task_ratio=0.5")
    batch = next(iter(dm.train_dataloader()))
    tasks = []
    for row in range(len(batch["target"])):
        train_text = decoded(model, batch["input_ids"][row], batch["attention_mask"][row])
        eval_text = decoded(model, batch["prompt_ids"][row], batch["prompt_mask"][row])
        target_title = model.titles.titles[int(batch["target"][row])]
        candidates = [model.titles.titles[i] for i in batch["candidates"][row].tolist()]
        assert "candidates :" in eval_text and "choose the answer from the candidates" in eval_text
        assert all(f'" {c} "' in eval_text.split("candidates :")[-1] for c in candidates)
        response = train_text.split("response :")[-1]
        assert response.strip().startswith(f'" {target_title} "')
        if "candidates :" in train_text:  # Recommend_Retrieval: the target is among the shown candidates
            shown = train_text.split("candidates :")[-1].split("# # # response")[0]
            assert shown.count(f'" {target_title} "') == 1
            tasks.append("retrieval")
        else:
            assert "choose the answer" not in train_text
            tasks.append("recommend")
    assert set(tasks) == {"retrieval", "recommend"}
    again = next(iter(dm.train_dataloader()))  # the task draw is seeded per example: same prompts every time
    order = {(int(u), int(t)): i for i, (u, t) in enumerate(zip(again["user"], again["target"]))}
    for row in range(len(batch["target"])):
        twin = order.get((int(batch["user"][row]), int(batch["target"][row])))
        if twin is not None and batch["history"][row].tolist() == again["history"][twin].tolist():
            assert batch["input_ids"][row][-20:].tolist() == again["input_ids"][twin][-20:].tolist()


@pytest.mark.parametrize("ratio, has_candidates", [(0.0, False), (1.0, True)])
def test_task_ratio_extremes(tmp_path, ratio, has_candidates) -> None:
    model, dm = palr(tmp_path, f"model.retrieval_task_ratio={ratio}")
    batch = next(iter(dm.train_dataloader()))
    texts = [decoded(model, batch["input_ids"][r], batch["attention_mask"][r]) for r in range(len(batch["target"]))]
    assert all(("candidates :" in t) == has_candidates for t in texts)


def test_generation_is_constrained_to_each_users_candidates(tmp_path) -> None:
    model, dm = palr(tmp_path)
    model.eval()
    batch = next(iter(dm.test_dataloader()))
    ranked = model.rank(batch, 4)
    for row, cands in zip(ranked.tolist(), batch["candidates"].tolist()):
        assert sorted(row) == sorted(cands)  # exactly the 4 candidates, each once


def test_popularity_retriever_skips_seen_items(tmp_path) -> None:
    model, dm = palr(tmp_path, "model.retriever=popularity", "model.num_candidates=3", "data.candidates_path=null")
    assert dm.protocol.candidates == "full"  # no candidates file: the lists come from the popularity retriever
    batch = next(iter(dm.test_dataloader()))
    assert batch["candidates"].shape[1] == 3
    for history, cands in zip(batch["history"].tolist(), batch["candidates"].tolist()):
        assert not set(history) & set(cands)


def test_profiles_enter_the_prompt_and_bad_files_are_errors(tmp_path) -> None:
    corpus = cycle_corpus(NUM_ITEMS)
    profiles = tmp_path / "profiles.jsonl"
    profiles.write_text("".join(json.dumps({"key": u, "text": f"likes sci fi {u}"}) + "\n" for u in corpus.user_ids))
    model, dm = palr(tmp_path, f"model.profile_path={profiles}", corpus=corpus)
    batch = next(iter(dm.test_dataloader()))
    user = int(batch["user"][0])
    assert f"user profile : likes sci fi {corpus.user_ids[user]}" in decoded(
        model, batch["prompt_ids"][0], batch["prompt_mask"][0]
    )
    profiles.write_text('{"key": "1", "text": "ok"}\nnot json\n')
    with pytest.raises(DataError, match=r"profiles.jsonl:2: expected a JSON object"):
        palr(tmp_path, f"model.profile_path={profiles}")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.candidates_path=null"], "needs data.candidates_path"),
        (["model.retriever=bm25"], "unknown model.retriever 'bm25'"),
        (["model.retrieval_task_ratio=1.5"], "retrieval_task_ratio must be in"),
    ],
)
def test_bad_settings_are_config_errors(tmp_path, overrides, message) -> None:
    with pytest.raises(ConfigError, match=message):
        palr(tmp_path, *overrides)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_tiny_palr_learns_to_pick_the_next_item_among_candidates(tmp_path) -> None:
    """Candidates are random items plus the target; only the cycle rule tells which one comes next."""
    torch.manual_seed(0)
    model, dm = palr(tmp_path, "model.retrieval_task_ratio=1.0", "loss.name=msl")
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.003)
    model.train()
    for _ in range(8):
        for batch in dm.train_dataloader():
            optimizer.zero_grad()
            model.compute_loss(batch).backward()
            optimizer.step()
    model.eval()
    batch = next(iter(dm.test_dataloader()))
    hit_at_1 = (model.rank(batch, 4)[:, 0] == batch["target"]).float().mean()
    assert hit_at_1 > 0.7  # chance is 1/4 (0.875 measured; about 6 s of CPU)
