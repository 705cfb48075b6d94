"""The LLM layer: tiny backbone + bundled tokenizer, LoRA, cached decoding equal to teacher forcing, the title trie
(dedup, round trip, per-row candidates) and trie-constrained beam search equal to exhaustive scoring."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from zoo.data.prompts import PromptTokens, pack_left
from zoo.errors import ConfigError
from zoo.modules.llm import CausalLMBackbone, LLMConfig, generate_items
from zoo.modules.title_trie import TitleTrie, clean_title

TITLES = ["", "The Hobbit", "The Hobbit 2", "Dune", "dune", "Emma &amp; Co", "title_6", "", "Persuasion"]


def tiny_cfg(**overrides) -> LLMConfig:
    settings = {"tiny_hidden": 32, "tiny_layers": 2, "tiny_heads": 2, **overrides}
    return OmegaConf.structured(LLMConfig(**settings))


@pytest.fixture(scope="module")
def backbone() -> CausalLMBackbone:
    torch.manual_seed(0)
    return CausalLMBackbone(tiny_cfg()).eval()


@pytest.fixture(scope="module")
def titles(backbone) -> TitleTrie:
    return TitleTrie(TITLES, backbone.tokenizer, backbone.eos_token_id)


def test_tiny_backbone_uses_the_bundled_tokenizer_with_eos_and_pad(backbone) -> None:
    tok = backbone.tokenizer
    assert tok.eos_token == "[SEP]" and tok.pad_token == "[PAD]"
    assert backbone.vocab_size == len(tok)
    assert all(p.requires_grad for p in backbone.parameters())


def test_lora_trains_only_adapters_on_the_target_modules() -> None:
    model = CausalLMBackbone(tiny_cfg(lora_r=4, lora_target_modules=["q_proj", "v_proj"]))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable} == {"q_proj", "v_proj"}


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"lora_r": 2, "lora_target_modules": ["query"]}, "lora_target_modules"),
        ({"dtype": "float8"}, "unknown model.dtype"),
        ({"tokenizer": "/nonexistent/tokenizer"}, "cannot load tokenizer"),
        ({"tiny_hidden": 30, "tiny_heads": 4}, "multiple of"),
    ],
)
def test_bad_backbone_settings_are_config_errors(overrides, message) -> None:
    with pytest.raises(ConfigError, match=message):
        CausalLMBackbone(tiny_cfg(**overrides))


def test_gradient_checkpointing_is_switched_on() -> None:
    model = CausalLMBackbone(tiny_cfg(gradient_checkpointing=True))
    assert model.model.is_gradient_checkpointing


def test_selected_logits_and_cached_decoding_equal_full_teacher_forcing(backbone) -> None:
    """Left-padded rows: logits of selected positions and token-by-token cached decoding both equal one full
    forward pass of each row on its own (positions are counted from the first real token)."""
    rows = [[5, 6, 7, 8, 9, 10], [11, 12, 13]]
    batch = pack_left(rows, None, backbone.pad_token_id)
    select = batch.attention_mask.bool()
    picked = backbone(batch.input_ids, batch.attention_mask, select)
    alone = [backbone.model(input_ids=torch.tensor([r])).logits[0] for r in rows]
    assert torch.allclose(picked, torch.cat(alone), atol=1e-5)
    prompts = pack_left([r[:-2] for r in rows], None, backbone.pad_token_id)
    logits, cache = backbone.prefill(prompts.input_ids, prompts.attention_mask)
    mask = prompts.attention_mask
    for step in range(2):
        assert torch.allclose(logits, torch.stack([a[len(r) - 3 + step] for a, r in zip(alone, rows)]), atol=1e-5)
        mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)
        logits, cache = backbone.decode(torch.tensor([r[len(r) - 2 + step] for r in rows]), mask, cache)


def test_titles_are_cleaned_and_duplicates_renamed_deterministically(titles) -> None:
    assert clean_title("Emma &amp;  Co ", 5) == "Emma & Co"
    assert clean_title("title_6", 6) == "item 6" and clean_title("", 7) == "item 7"
    # the uncased tokenizer makes "Dune" and "dune" the same tokens: the later item gets its id appended
    assert titles.titles[3] == "Dune" and titles.titles[4] == "dune (item 4)"
    assert titles.num_renamed == 1
    assert len({tuple(s) for s in titles.sequences[1:]}) == titles.num_items == len(TITLES) - 1
    for item in range(1, titles.num_items + 1):
        seq = titles.response(item)
        assert seq[-1] == titles.eos_token_id
        node = torch.zeros(1, dtype=torch.long)
        for tok in seq:
            node = titles.trie.step(node, torch.tensor([tok]))
        assert int(titles.trie.item(node)[0]) == item


def exhaustive_log_probs(backbone, prompt: list[int], sequences: dict[int, list[int]]) -> dict[int, float]:
    """Full-vocabulary log-probability of every item's response after ``prompt`` (teacher forcing, no search)."""
    out = {}
    for item, seq in sequences.items():
        ids = torch.tensor([prompt + seq])
        logp = torch.log_softmax(backbone.model(input_ids=ids).logits[0].double(), -1)
        out[item] = float(sum(logp[len(prompt) - 1 + t, tok] for t, tok in enumerate(seq)))
    return out


def test_constrained_beam_search_ranks_every_item_like_exhaustive_scoring(backbone, titles) -> None:
    prompts = [[1000, 2000, 3000, 4000], [5000, 6000]]
    batch = pack_left(prompts, None, backbone.pad_token_id)
    beams = titles.num_items  # every item fits in the beam: the ranking must be exact
    items, scores = generate_items(backbone, batch.input_ids, batch.attention_mask, titles.trie, beams)
    for row, prompt in enumerate(prompts):
        ref = exhaustive_log_probs(backbone, prompt, {i: titles.response(i) for i in range(1, titles.num_items + 1)})
        expected = sorted(ref, key=ref.get, reverse=True)
        assert items[row].tolist() == expected
        assert torch.allclose(
            scores[row].double(), torch.tensor([ref[i] for i in expected], dtype=torch.float64), atol=1e-4
        )


def test_candidate_trie_restricts_each_row_to_its_candidates(backbone, titles) -> None:
    candidates = torch.tensor([[3, 1, 5, 0], [8, 2, 2, 4]])  # 0 = none, repeats are ignored
    _, starts = titles.candidate_trie(candidates)
    assert bool((starts > 0).all())
    prompts = [[1000, 2000], [3000, 4000, 5000]]
    batch = pack_left(prompts, None, backbone.pad_token_id)
    items, scores = generate_items(
        backbone,
        batch.input_ids,
        batch.attention_mask,
        titles.trie,
        4,
        candidates=candidates,
        sequences=titles.sequences,
    )
    for row, prompt in enumerate(prompts):
        allowed = [i for i in dict.fromkeys(candidates[row].tolist()) if i > 0]
        ref = exhaustive_log_probs(backbone, prompt, {i: titles.response(i) for i in allowed})
        expected = sorted(ref, key=ref.get, reverse=True)
        assert items[row, : len(expected)].tolist() == expected
        assert items[row, len(expected) :].tolist() == [0] * (4 - len(expected))
        assert torch.allclose(
            scores[row, : len(expected)].double(),
            torch.tensor([ref[i] for i in expected], dtype=torch.float64),
            atol=1e-4,
        )


def test_prompt_history_drops_the_oldest_titles_to_fit(backbone, titles) -> None:
    head, tail = [1, 2], [3]
    full = PromptTokens(backbone.tokenizer, titles.quoted, max_prompt_tokens=1000)
    ids = full.fit_history(head, [0, 0, 1, 3, 8], tail)
    assert ids == head + titles.quoted[1] + full.separator + titles.quoted[3] + full.separator + titles.quoted[8] + tail
    budget = len(head) + len(tail) + len(titles.quoted[3]) + len(full.separator) + len(titles.quoted[8])
    short = PromptTokens(backbone.tokenizer, titles.quoted, max_prompt_tokens=budget)
    assert (
        short.fit_history(head, [1, 3, 8], tail) == head + titles.quoted[3] + full.separator + titles.quoted[8] + tail
    )


def test_pack_left_aligns_rows_at_the_end_and_labels_only_responses() -> None:
    batch = pack_left([[5, 6, 7], [8]], [[1, 2], [3, 4, 9]], pad_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 7, 1, 2], [0, 8, 3, 4, 9]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1], [0, 1, 1, 1, 1]]
    assert batch.labels.tolist() == [[-100, -100, -100, 1, 2], [-100, -100, 3, 4, 9]]
