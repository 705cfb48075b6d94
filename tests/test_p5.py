"""P5: whole-word ids, generation with whole words, trie-valid beams, the three item indexings (unique,
deterministic, built from training interactions only), the direct task on candidate lists, a run that learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SHRINK, synthetic_corpus

from zoo.build import build
from zoo.config import compose
from zoo.data.corpus import Corpus
from zoo.data.indexing import build_index, cooccurrence, training_sequences
from zoo.errors import ConfigError
from zoo.models.p5 import P5, P5Prompts, word_start_rule
from zoo.modules.llm import LLMConfig, load_tokenizer


def built(*extra: str, corpus=None):
    torch.manual_seed(0)
    cfg = compose("p5_ml100k", [*SHRINK, *P5.test_overrides, "logger.name=none", "seed=0", *extra])
    return build(cfg, corpus=corpus if corpus is not None else synthetic_corpus())


def test_sub_pieces_of_one_id_share_one_whole_word_id():
    tokenizer = load_tokenizer(LLMConfig())
    ids = ["", "1234", "98765", "<CI1><CI22>"]
    tokenizer.add_tokens(["<CI1>", "<CI22>"])
    prompts = P5Prompts(tokenizer, ids, "toys", max_history=20)
    template = "{user} has interacted with items {history} in {dataset} ."
    tokens, words = prompts.render(template, user=6, history=[1, 2, 3])
    assert len(tokens) == len(words) and tokens[-1] == tokenizer.eos_token_id and words[-1] == 0
    position, seen = 0, []
    for tok_list, _ in [(prompts._tokens("user_7"), None)]:
        assert len(tok_list) > 1 and len(set(words[: len(tok_list)])) == 1  # the user id: one word
    for item in (1, 2, 3):
        piece = prompts.item_prompt[item]
        assert len(piece) > 1  # the tokenizer splits item_<id>: "item", "_", digits ...
        position = next(p for p in range(position, len(tokens)) if tokens[p : p + len(piece)] == piece)
        span = words[position : position + len(piece)]
        assert len(set(span)) == 1, f"item {item}: whole-word ids {span}"
        seen.append(span[0])
        position += len(piece)
    assert len(set(seen)) == 3  # different items are different words
    assert words == sorted(words[:-1]) + [0]  # word ids count up through the prompt


def test_word_starts_follow_each_tokenizer_convention():
    class Fake:
        def __init__(self, vocab):
            self.vocab = {t: i for i, t in enumerate(vocab)}

        def get_vocab(self):
            return self.vocab

    sentencepiece = word_start_rule(Fake([f"▁w{i}" for i in range(20)] + ["x"]))
    assert sentencepiece("▁item") and not sentencepiece("_") and not sentencepiece("73")
    bpe = word_start_rule(Fake([f"Ġw{i}" for i in range(20)]))
    assert bpe("Ġitem") and not bpe("item")
    wordpiece = word_start_rule(Fake(["item", "##4", "_"]))
    assert wordpiece("item") and not wordpiece("##4")


def test_generation_receives_whole_word_ids():
    model, datamodule = built()
    model.eval()
    batch = next(iter(datamodule.test_dataloader()))
    received = []
    model.whole_word.register_forward_hook(lambda mod, args, out: received.append(args[0].clone()))
    with torch.no_grad():
        ranked = model.rank(batch, 5)
        expected = model.encode(batch, train=False)["whole_word_ids"]
    assert received and torch.equal(received[0], expected) and int(expected.max()) > 1
    with torch.no_grad():  # and they change what is generated: zero the table and the beams' scores move
        step = model.step_decoder(model.encode(batch, train=False))
        before = step(None, None)
        model.whole_word.weight.mul_(0)
        after = model.step_decoder(model.encode(batch, train=False))(None, None)
    assert not torch.allclose(before, after)
    assert ranked.shape == (len(batch["target"]), 5)


@pytest.mark.parametrize("indexing", ["random", "collaborative"])
def test_every_beam_output_is_a_real_item(indexing):
    model, datamodule = built(f"model.indexing={indexing}", "model.token_size=4", "model.n_clusters=2")
    model.eval()
    batch = next(iter(datamodule.test_dataloader()))
    with torch.no_grad():
        ranked = model.rank(batch, 10)
    assert bool(((ranked >= 1) & (ranked <= model.num_items)).all()), ranked
    for row in ranked.tolist():
        assert len(set(row)) == len(row)
    assert model.trie.num_items == model.num_items and model.trie.duplicates == 0


def _replace_heldout(corpus: Corpus, seed: int = 1) -> Corpus:
    """The same training parts, other validation and test items."""
    rng = np.random.default_rng(seed)
    items = corpus.items.copy()
    for end in corpus.offsets[1:]:
        items[end - 2 : end] = rng.integers(1, corpus.num_items + 1, size=2)
    return Corpus(corpus.name, corpus.item_ids, corpus.user_ids, corpus.offsets, items).validate()


@pytest.mark.parametrize("indexing", ["random", "sequential", "collaborative"])
def test_indexes_are_unique_deterministic_and_use_training_interactions_only(indexing):
    corpus = synthetic_corpus(num_items=30, users=60)
    ids, tokens = build_index(corpus, indexing, seed=3, token_size=4, n_clusters=3)
    again, _ = build_index(synthetic_corpus(num_items=30, users=60), indexing, seed=3, token_size=4, n_clusters=3)
    assert ids == again
    assert ids[0] == "" and len(set(ids[1:])) == corpus.num_items
    heldout_changed, _ = build_index(_replace_heldout(corpus), indexing, seed=3, token_size=4, n_clusters=3)
    assert heldout_changed == ids  # validation / test items never shape an id
    if indexing == "collaborative":
        assert all(len(i) > 0 and i.startswith("<CI") for i in ids[1:])
        assert set(tokens) >= {t for i in ids[1:] for t in ["<CI" + p for p in i.split("<CI")[1:]]}
        depth = max(i.count("<CI") for i in ids[1:])
        assert depth >= 2  # 30 items, leaves of at most 4: clustered over more than one level


def test_collaborative_graph_is_sparse_and_counts_users():
    corpus = synthetic_corpus(num_items=30, users=60)
    graph = cooccurrence(corpus.num_items, training_sequences(corpus))
    assert graph.format == "csr" and graph.diagonal().sum() == 0
    a, b = 1, 2
    both = sum(1 for s in training_sequences(corpus) if a in s and b in s)
    assert graph[a, b] == both == graph[b, a]


def test_items_unseen_in_training_get_unique_reserved_ids():
    corpus = Corpus.from_sequences("tiny", [[1, 2, 3, 4, 5, 6], [2, 3, 4, 5, 7, 8]], num_items=9)
    ids, tokens = build_index(corpus, "collaborative", seed=0, token_size=2, n_clusters=2)
    unseen = [ids[i] for i in (6, 7, 8, 9)]  # only in validation / test, or nowhere
    assert all(i.startswith("<CI2>") for i in unseen) and len(set(ids[1:])) == 9 and "<CI2>" in tokens


def test_direct_task_ranks_each_rows_candidates_and_needs_candidates():
    model, datamodule = built("model.eval_task=direct", "data.eval_candidates=3")
    model.eval()
    batch = next(iter(datamodule.test_dataloader()))
    with torch.no_grad():
        ranked = model.rank(batch, 3, candidates=batch["candidates"])
    inside = (ranked[:, :, None] == batch["candidates"][:, None, :]).any(2)
    assert bool(inside.all())
    prompt = model.encode(batch, train=False)["input_ids"][0].tolist()
    for item in [i for i in batch["candidates"][0].tolist() if i]:  # the candidates are listed in the prompt
        piece = model.prompts.item_prompt[item]
        assert any(prompt[p : p + len(piece)] == piece for p in range(len(prompt)))
    with pytest.raises(ConfigError, match="data.eval_candidates"):
        built("model.eval_task=direct")


def test_training_prompts_are_drawn_per_epoch_and_repeat_for_the_same_epoch():
    model, datamodule = built()
    draws = {e: [model.train_prompt(0, [1, 2, 3], 4, e)[0] for _ in range(2)] for e in range(6)}
    assert all(a == b for a, b in draws.values())
    assert len({tuple(v[0]) for v in draws.values()}) > 1
    template = model.seq_templates["unseen"]
    assert template not in model.seq_templates["seen"]


@pytest.mark.parametrize("loss", ["lml", "msl", "msl_ats"])
def test_a_short_run_lowers_the_loss(loss, one_thread):
    model, datamodule = built(f"loss.name={loss}", "model.tasks=[sequential,yesno]", "model.task_weights=[0.7,0.3]")
    batch = next(iter(datamodule.train_dataloader()))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    model.train()
    losses = []
    for _ in range(15):
        optimizer.zero_grad()
        value = model.compute_loss(batch)
        value.backward()
        optimizer.step()
        losses.append(float(value))
    assert np.isfinite(losses).all() and losses[-1] < 0.85 * losses[0], losses


def test_causal_variant_trains_and_decodes_real_items():
    model, datamodule = built("model.arch=causal", "model.tiny_hidden=16", "model.tiny_layers=1", "model.tiny_heads=2")
    batch = next(iter(datamodule.train_dataloader()))
    loss = model.compute_loss(batch)
    loss.backward()
    assert torch.isfinite(loss)
    model.eval()
    test = next(iter(datamodule.test_dataloader()))
    with torch.no_grad():
        ranked = model.rank(test, 5)
    assert bool(((ranked >= 1) & (ranked <= model.num_items)).all())


def test_bad_settings_are_one_line_errors():
    for extra, message in [
        ("model.arch=rnn", "model.arch"),
        ("model.tasks=[sequential,rating]", "model.tasks"),
        ("model.indexing=semantic", "model.indexing"),
    ]:
        with pytest.raises(ConfigError, match=message) as err:
            built(extra)
        assert "\n" not in str(err.value)
