"""SASRec with KAR's item knowledge as side information (``sasrec_kar``): the item-only knowledge stages, the fused
item table, "knowledge off = SASRec", on the shared synthetic corpus with a tiny Llama for generation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import SHRINK, synthetic_corpus

from zoo.build import build
from zoo.config import compose
from zoo.errors import ConfigError
from zoo.models.kar import knowledge
from zoo.models.sasrec import SASRec
from zoo.models.sasrec_kar import KnowledgeItemEmbedding, SASRecKAR
from zoo.modules.experts import TowerAdaptor
from zoo.stages import resolve, stage_root

TINY = ("model.kar_llm=tiny-llama", "model.kar_max_new_tokens=4", "model.kar_hidden=16", "model.hidden_size=16")


def config(tmp_path, *extra: str):
    return compose("sasrec_kar_ml100k", [*SHRINK, f"run_root={tmp_path}", "logger.name=none", "seed=0", *TINY, *extra])


@pytest.fixture(scope="module")
def corpus():
    return synthetic_corpus()


@pytest.fixture(scope="module")
def built(corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("sasrec_kar")
    cfg = config(root)
    cfg.data.cache_dir = str(root / "cache")  # its own stage cache: what another test module generated is not in it
    model, dm = build(cfg, corpus=corpus)
    return cfg, model, dm


def test_the_item_stage_has_item_prompts_only_and_vectors_with_a_zero_padding_row(built, corpus):
    cfg, model, _ = built
    record = knowledge.load_knowledge(resolve("kar_item_knowledge", cfg, corpus))
    assert record["users"] == {} and record["user_history"] == {}
    assert sorted(record["items"]) == sorted(str(corpus.item_ids[i]) for i in range(1, corpus.num_items + 1))
    vectors = knowledge.load_item_vectors(resolve("kar_item_vectors", cfg, corpus))
    assert vectors.shape == (corpus.num_items + 1, 384) and not vectors[0].any() and vectors[1:].any(axis=1).all()
    assert isinstance(model, SASRecKAR) and isinstance(model.encoder.item_embedding, KnowledgeItemEmbedding)


def test_the_fused_table_is_id_plus_adapted_knowledge_and_padding_stays_zero(built):
    _, model, _ = built
    fused = model.encoder.item_embedding
    table = fused.weight
    ids = torch.arange(len(table))
    expected = fused.id_embedding(ids) + fused.adaptor(fused.knowledge)
    assert torch.allclose(table[1:], expected[1:], atol=1e-6) and not table[0].any()
    assert torch.allclose(fused(torch.tensor([[0, 3, 1]])), table[[0, 3, 1]].unsqueeze(0), atol=1e-6)
    assert table.requires_grad  # trained: the adaptor's gradient flows through the output table
    fused.eval()
    with torch.no_grad():
        first = fused.weight
        assert fused.weight is first  # computed once per evaluation pass
    fused.train()
    with torch.no_grad():
        assert fused.weight is not first


def test_a_training_step_trains_the_adaptor_and_never_calls_the_text_encoder(built, monkeypatch):
    _, model, dm = built

    def refuse(*args, **kwargs):
        raise AssertionError("the knowledge encoder ran inside a training step")

    monkeypatch.setattr(knowledge, "encode_texts", refuse)
    monkeypatch.setattr(knowledge, "load_text_encoder", refuse)
    model.train()
    batch = next(iter(dm.train_dataloader()))
    loss = model.compute_loss(batch)
    loss.backward()
    adaptor = model.encoder.item_embedding.adaptor
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in adaptor.parameters())
    model.zero_grad()


def test_knowledge_off_is_sasrec_itself(corpus, tmp_path):
    torch.manual_seed(0)
    plain, _ = build(config(tmp_path, "model.kar=false"), corpus=corpus)
    torch.manual_seed(0)
    sasrec, _ = build(
        compose(
            "sasrec_ml100k", [*SHRINK, f"run_root={tmp_path}", "logger.name=none", "seed=0", "model.hidden_size=16"]
        ),
        corpus=corpus,
    )
    assert type(sasrec) is SASRec and not isinstance(plain.encoder.item_embedding, KnowledgeItemEmbedding)
    mine, theirs = plain.state_dict(), sasrec.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert plain.stages_for(plain.cfg) == ()


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.kar_towers=both", "item knowledge only"),
        ("model.kar_adaptor=single_gate_moe", "unknown model.kar_adaptor 'single_gate_moe'"),
        ("model.kar_backend=grpc", "unknown model.kar_backend 'grpc'"),
    ],
)
def test_bad_settings_fail_at_compose(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        config(tmp_path, override)


def test_the_item_stage_reuses_the_ctr_stages_texts_for_the_same_settings(built, corpus, kar_prompts):
    """Both stages share one text cache: an item fact generated for KAR's CTR models is not generated again."""
    cfg, _, _ = built
    texts = next((stage_root(cfg) / "kar_knowledge" / "texts").glob("*.jsonl"))
    assert len(texts.read_text().splitlines()) == corpus.num_items
    ctr = compose(
        "kar_din_ml100k",
        [*SHRINK, "model.kar_llm=tiny-llama", "model.kar_max_new_tokens=4"],
    )
    ctr.data.cache_dir = cfg.data.cache_dir
    record = knowledge.load_knowledge(resolve("kar_knowledge", ctr, corpus))
    assert len(kar_prompts) == corpus.num_users  # the users only: every item was in the shared cache
    assert all("history over time" in p for p in kar_prompts)
    assert "NEW" not in {v["text"] for v in record["items"].values()}


@pytest.mark.parametrize("kind", ["mlp", "hybrid"])
def test_one_tower_adaptor_gates_sum_to_one(kind):
    torch.manual_seed(0)
    adaptor = TowerAdaptor(kind, 12, 16, 8, n_experts=3)
    x = torch.randn(4, 5, 12)
    assert adaptor(x).shape == (4, 5, 8)
    gates = adaptor.gates(x)
    assert gates.shape == (4, 5, 3 if kind == "hybrid" else 1)
    assert torch.allclose(gates.sum(-1), torch.ones(4, 5), atol=1e-6)
    with pytest.raises(ConfigError, match="one-tower adaptor"):
        TowerAdaptor("single_gate_moe", 12, 16, 8)


def test_shipping_keeps_complete_records_only(tmp_path):
    from benchmarks.kar_knowledge import ship

    cache = tmp_path / "beauty-abc.jsonl"
    good = [{"key": f"item:{i}", "text": f"t{i}", "prompt_sha1": "s"} for i in range(3)]
    cache.write_text("".join(json.dumps(r) + "\n" for r in good) + '{"key": "item:3", "te')  # killed mid-line
    assert ship(cache, tmp_path / "out") == 3
    shipped = [json.loads(line) for line in (tmp_path / "out" / cache.name).read_text().splitlines()]
    assert shipped == good
    assert np.array_equal(np.array([r["key"] for r in shipped]), np.array([r["key"] for r in good]))
