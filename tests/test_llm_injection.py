"""Embedding injection: vectors placed at marked positions (before, between and after the text tokens) through
``inputs_embeds`` give exactly the plain-token path when they are the tokens' own embeddings, under left padding,
in teacher forcing, prefill + KV-cache decoding, constrained beam search and the suffix read-out."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from zoo.data.prompts import pack_left
from zoo.errors import ConfigError
from zoo.modules.llm import INJECT, CausalLMBackbone, LLMConfig, generate_items
from zoo.modules.title_trie import TitleTrie

TITLES = ["", "The Hobbit", "Dune", "Emma", "Persuasion", "Ulysses"]


@pytest.fixture(scope="module")
def backbone() -> CausalLMBackbone:
    torch.manual_seed(0)
    cfg = OmegaConf.structured(LLMConfig(tiny_hidden=32, tiny_layers=2, tiny_heads=2))
    return CausalLMBackbone(cfg).eval()


def prompts(backbone):
    tok = backbone.tokenizer
    rows = [
        tok("a user who read many books", add_special_tokens=False)["input_ids"],
        tok("short", add_special_tokens=False)["input_ids"],
    ]
    batch = pack_left(rows, None, backbone.pad_token_id)  # left-padded: row 1 has padding first
    return batch.input_ids, batch.attention_mask


def marked(input_ids, attention_mask, picks):
    """Mark positions (first real token, one in the middle, the last) of each row for injection; the vectors
    that fill them are the original tokens' embeddings, so nothing should change."""
    ids = input_ids.clone()
    positions = []
    for row in range(len(ids)):
        real = attention_mask[row].nonzero().flatten()
        chosen = [int(real[i]) for i in picks if i < len(real)] if len(real) > 2 else [int(real[0])]
        positions.append(sorted(set(chosen)))
    count = min(len(p) for p in positions)
    positions = [p[:count] for p in positions]
    for row, cols in enumerate(positions):
        ids[row, cols] = INJECT
    return ids, positions


def injected(backbone, input_ids, attention_mask):
    ids, positions = marked(input_ids, attention_mask, picks=(0, 2, -1))
    table = backbone.model.get_input_embeddings()
    vectors = torch.stack([table(input_ids[row, cols]) for row, cols in enumerate(positions)])  # [B, S, d]
    return ids, vectors


def test_teacher_forcing_and_read_out_equal_the_plain_tokens(backbone):
    input_ids, mask = prompts(backbone)
    ids, vectors = injected(backbone, input_ids, mask)
    select = mask.bool()
    with torch.no_grad():
        plain = backbone(input_ids, mask, select)
        soft = backbone(ids, mask, select, vectors=vectors)
        assert torch.allclose(soft, plain, atol=1e-5)
        assert torch.allclose(backbone.read_out(ids, mask, vectors), backbone.read_out(input_ids, mask), atol=1e-5)
        other = backbone(ids, mask, select, vectors=torch.randn_like(vectors))
    assert not torch.allclose(other, plain, atol=1e-3)  # the vectors are really used


def test_prefill_kv_cache_and_constrained_beam_search_equal_the_plain_tokens(backbone):
    titles = TitleTrie(TITLES, backbone.tokenizer, backbone.eos_token_id)
    input_ids, mask = prompts(backbone)
    ids, vectors = injected(backbone, input_ids, mask)
    plain_logits, _ = backbone.prefill(input_ids, mask)
    soft_logits, _ = backbone.prefill(ids, mask, vectors)
    assert torch.allclose(soft_logits, plain_logits, atol=1e-5)
    items, scores = generate_items(backbone, input_ids, mask, titles.trie, num_beams=4)
    soft_items, soft_scores = generate_items(backbone, ids, mask, titles.trie, num_beams=4, vectors=vectors)
    assert torch.equal(soft_items, items) and torch.allclose(soft_scores, scores, atol=1e-4)
    candidates = torch.tensor([[2, 4, 0], [1, 3, 5]])
    plain_c, _ = generate_items(backbone, input_ids, mask, None, 3, candidates=candidates, sequences=titles.sequences)
    soft_c, _ = generate_items(
        backbone, ids, mask, None, 3, candidates=candidates, sequences=titles.sequences, vectors=vectors
    )
    assert torch.equal(soft_c, plain_c)


def test_a_learned_suffix_gets_gradients_and_bad_counts_are_one_error(backbone):
    input_ids, mask = prompts(backbone)
    suffix = torch.nn.Parameter(torch.randn(1, backbone.model.config.hidden_size))
    ids = torch.cat([input_ids, torch.full((len(input_ids), 1), INJECT)], dim=1)
    full_mask = torch.cat([mask, torch.ones(len(mask), 1, dtype=mask.dtype)], dim=1)
    state = backbone.read_out(ids, full_mask, suffix.expand(len(ids), -1).unsqueeze(1))
    state.sum().backward()
    assert state.shape == (2, backbone.model.config.hidden_size)
    assert suffix.grad is not None and suffix.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="injected vectors"):
        backbone(ids, full_mask, full_mask.bool(), vectors=torch.zeros(1, 5, suffix.shape[1]))
    with pytest.raises(ConfigError, match="no vectors were given"):
        backbone(ids, full_mask, full_mask.bool())
