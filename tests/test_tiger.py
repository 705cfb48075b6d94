"""TIGER: token inputs, the cached incremental decoder against T5's full forward, constrained ranking, and the
one-command run (embeddings -> RQ-VAE -> Semantic IDs -> seq2seq -> test metrics) with its caches reused."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

from zoo.config import compose
from zoo.data.corpus import Corpus
from zoo.data.datamodule import SequentialDataModule
from zoo.errors import ConfigError
from zoo.models.tiger import EOS, SemanticIdInputs, T5StepDecoder, Tiger
from zoo.modules.text_encoder import item_sentences, load_sentence_encoder
from zoo.run import main

TINY_MODEL = [
    "model.d_model=32",
    "model.num_heads=2",
    "model.d_kv=16",
    "model.d_ff=64",
    "model.num_encoder_layers=1",
    "model.num_decoder_layers=1",
    "model.rqvae.hidden_dims=[32]",
    "model.rqvae.latent_dim=8",
    "model.rqvae.codebook_size=16",
    "model.rqvae.epochs=4",
    "model.rqvae.eval_every=2",
    "model.rqvae.restart_every=1",
]


def test_inputs_put_user_token_codes_oldest_first_then_eos():
    inputs = SemanticIdInputs(num_items=3, id_length=2, user_offset=100, num_user_tokens=2000)
    inputs.item_tokens = torch.tensor([[0, 0], [10, 11], [20, 21], [30, 31]])
    batch = inputs(
        {
            "history": torch.tensor([[0, 0, 3, 1], [0, 0, 0, 2]]),
            "user": torch.tensor([5, 2001]),
            "target": torch.tensor([2, 3]),
        }
    )
    assert batch["input_ids"].tolist() == [[105, 30, 31, 10, 11, EOS], [101, 20, 21, EOS, 0, 0]]
    assert batch["attention_mask"].tolist() == [[True] * 6, [True] * 4 + [False] * 2]
    assert batch["labels"].tolist() == [[20, 21], [30, 31]]


def tiny_t5(vocab: int = 40) -> T5ForConditionalGeneration:
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=vocab,
        d_model=16,
        d_kv=8,
        d_ff=32,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=3,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    return T5ForConditionalGeneration(config).eval()


def test_step_decoder_matches_the_full_forward_pass_with_beam_reordering():
    t5 = tiny_t5()
    input_ids = torch.randint(2, 40, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 5:] = False
    input_ids[1, 5:] = 0
    # beams after step 1: (a, b) from parent 0; after step 2: beam 0 continues beam 1, beam 1 continues beam 0
    a, b, c, d = torch.tensor([3, 4]), torch.tensor([5, 6]), torch.tensor([7, 8]), torch.tensor([9, 10])
    step = T5StepDecoder(t5, input_ids, mask)
    with torch.no_grad():
        logits0 = step(None, None)
        logits1 = step(torch.zeros(2, 2, dtype=torch.long), torch.stack([a, b], 1))
        logits2 = step(torch.tensor([[1, 0], [1, 0]]), torch.stack([c, d], 1))
    start = torch.zeros(2, 1, dtype=torch.long)
    expected = {  # (step logits, decoder inputs whose last position they must equal)
        "step 0": (logits0[:, 0], start),
        "step 1 beam 0": (logits1[:, 0], torch.cat([start, a[:, None]], 1)),
        "step 2 beam 0": (logits2[:, 0], torch.cat([start, b[:, None], c[:, None]], 1)),
        "step 2 beam 1": (logits2[:, 1], torch.cat([start, a[:, None], d[:, None]], 1)),
    }
    for name, (got, decoder_inputs) in expected.items():
        with torch.no_grad():
            full = t5(input_ids=input_ids, attention_mask=mask, decoder_input_ids=decoder_inputs).logits
        torch.testing.assert_close(got, full[:, -1], atol=1e-5, rtol=1e-4, msg=name)


def small_corpus(num_items: int = 12, num_users: int = 9) -> Corpus:
    rng = random.Random(0)
    sequences = [[rng.randint(1, num_items) for _ in range(rng.randint(4, 8))] for _ in range(num_users)]
    return Corpus.from_sequences("small", sequences, num_items=num_items)


def tiger_on(corpus: Corpus, tmp_path: Path, *overrides: str) -> tuple[Tiger, SequentialDataModule]:
    cfg = compose("tiger_ml100k", [f"run_root={tmp_path}", "data.eval_batch_size=4", *TINY_MODEL, *overrides])
    datamodule = SequentialDataModule(cfg.data, corpus=corpus)
    model = Tiger(cfg, datamodule)
    datamodule.connect(model.data_spec())
    return model, datamodule


def test_rank_returns_only_real_distinct_items(tmp_path):
    corpus = small_corpus()
    model, datamodule = tiger_on(corpus, tmp_path)
    codes = torch.tensor(list(itertools.islice(itertools.product(range(3), range(2), range(2)), 12)))
    model.set_semantic_ids(torch.cat([codes, torch.zeros(12, 1, dtype=torch.long)], 1))
    model.eval()
    batch = next(iter(datamodule.test_dataloader()))
    ranked = model.rank(batch, 20)
    assert ranked.shape == (len(batch["target"]), 20)
    for row in ranked.tolist():
        real = [i for i in row if i]
        assert len(real) == 12 and sorted(real) == list(range(1, 13))  # every item once, then empty slots
        assert row[12:] == [0] * 8


def test_length_groups_change_nothing_but_the_padding(tmp_path):
    """Running a batch as groups of similar length gives the same loss and the same ranked lists."""
    codes = torch.tensor(list(itertools.islice(itertools.product(range(3), range(2), range(2)), 12)))
    codes = torch.cat([codes, torch.zeros(12, 1, dtype=torch.long)], 1)
    results = []
    for groups in (1, 3):
        torch.manual_seed(0)
        model, datamodule = tiger_on(small_corpus(), tmp_path, f"model.length_groups={groups}")
        model.set_semantic_ids(codes)
        model.eval()
        train_batch = next(iter(datamodule.train_dataloader()))
        test_batch = next(iter(datamodule.test_dataloader()))
        with torch.no_grad():
            results.append((model.compute_loss(train_batch), model.decode(test_batch, 5)))
    (loss_one, beams_one), (loss_grouped, beams_grouped) = results
    torch.testing.assert_close(loss_one, loss_grouped)
    assert torch.equal(beams_one.items, beams_grouped.items)
    torch.testing.assert_close(beams_one.scores, beams_grouped.scores)


def test_token_losses_from_the_registry_train_on_semantic_ids(tmp_path):
    """lml (the default) and msl, which reads the Semantic-ID trie handed over in prepare/set_semantic_ids."""
    codes = torch.tensor(list(itertools.islice(itertools.product(range(3), range(2), range(2)), 12)))
    codes = torch.cat([codes, torch.zeros(12, 1, dtype=torch.long)], 1)
    losses = {}
    for name in ("lml", "msl"):
        torch.manual_seed(0)
        model, datamodule = tiger_on(small_corpus(), tmp_path, f"loss.name={name}")
        model.set_semantic_ids(codes)
        batch = next(iter(datamodule.train_dataloader()))
        loss = model.compute_loss(batch)
        loss.backward()
        assert torch.isfinite(loss) and model.t5.shared.weight.grad.abs().sum() > 0
        losses[name] = loss.item()
    assert losses["lml"] != pytest.approx(losses["msl"])  # msl normalises over the trie's valid codes only


def test_semantic_ids_beyond_the_collision_level_are_a_config_error(tmp_path):
    model, _ = tiger_on(small_corpus(), tmp_path)
    codes = torch.zeros(12, 4, dtype=torch.long)
    codes[:, 3] = torch.arange(12) * 2  # 12 items on one prefix, collision codes up to 22 >= 16
    with pytest.raises(ConfigError, match="share one Semantic ID prefix"):
        model.set_semantic_ids(codes)


def test_missing_text_fields_are_a_config_error():
    corpus = small_corpus()
    with pytest.raises(ConfigError, match="none of the text fields"):
        item_sentences(corpus, ["title", "brand"])


def test_unknown_text_encoder_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="cannot load sentence encoder"):
        load_sentence_encoder(str(tmp_path / "no-such-encoder"))


def write_tiny_atomic(folder: Path, num_items: int = 40, num_users: int = 30) -> None:
    """A small RecBole atomic dataset with distinct titles and categories."""
    folder.mkdir(parents=True)
    rng = random.Random(1)
    colours = ["red", "blue", "green", "black", "white", "pink", "gold", "grey"]
    things = ["lipstick", "shampoo", "brush", "perfume", "lotion"]
    lines = ["item_id:token\ttitle:token_seq\tcategories:token_seq"]
    for i in range(num_items):
        lines.append(f"i{i}\t{colours[i % 8]} {things[i // 8]} no {i}\t{things[i // 8]}")
    (folder / f"{folder.name}.item").write_text("\n".join(lines) + "\n")
    rows = ["user_id:token\titem_id:token\ttimestamp:float"]
    for u in range(num_users):
        for t in range(rng.randint(5, 9)):
            rows.append(f"u{u}\ti{rng.randrange(num_items)}\t{t}")
    (folder / f"{folder.name}.inter").write_text("\n".join(rows) + "\n")


@pytest.mark.slow  # three CLI runs (~15 s); tests/test_methods.py runs tiger_ml100k end to end by default
def test_one_command_runs_every_stage_then_reuses_the_caches(tmp_path, capsys):
    data = tmp_path / "tiny"
    write_tiny_atomic(data)
    run_root = tmp_path / "runs"
    cache = tmp_path / "cache"  # the cache root of this test only (data.cache_dir)
    args = [
        "recipe=tiger_ml100k",
        "data.name=atomic",
        f"data.path={data}",
        f"data.cache_dir={cache}",
        f"run_root={run_root}",
        "trainer.max_epochs=2",
        "trainer.check_val_every_n_epoch=1",
        "trainer.enable_progress_bar=false",
        "logger.name=none",
        "data.batch_size=16",
        "data.eval_batch_size=16",
        *TINY_MODEL,
    ]
    assert main(args) == 0
    (first_dir,) = list((run_root / "tiger_ml100k").iterdir())
    first = json.loads((first_dir / "metrics.json").read_text())
    for key in ("test/ndcg@10", "test/recall@5", "rqvae/collision_rate", "rqvae/usage_l0", "rqvae/recon_mse"):
        assert np.isfinite(first[key]), key
    assert first["rqvae/reused_cache"] == 0.0
    # stage artifacts: <cache root>/stages/<stage>/<corpus>-<key>/ with their files and manifest.json
    (embedding_dir,) = list((cache / "stages" / "item_embeddings").iterdir())
    (ids_dir,) = list((cache / "stages" / "semantic_ids").iterdir())
    assert embedding_dir.name.startswith("tiny-") and ids_dir.name.startswith("tiny-")
    embedding_file, ids_file = embedding_dir / "embeddings.npy", ids_dir / "codes.npy"
    assert (embedding_dir / "manifest.json").is_file() and (ids_dir / "manifest.json").is_file()
    manifest = json.loads((ids_dir / "manifest.json").read_text())
    assert manifest["stage"] == "semantic_ids" and manifest["metrics"]["rqvae/collision_rate"] == pytest.approx(
        first["rqvae/collision_rate"]
    )
    codes = np.load(ids_file)  # one unique Semantic ID per item (the collision column makes them unique)
    assert len(codes) == len(np.load(embedding_file)) and len(np.unique(codes, axis=0)) == len(codes)
    stamps = embedding_file.stat().st_mtime_ns, ids_file.stat().st_mtime_ns
    assert (first_dir / "checkpoints" / "best.ckpt").is_file()

    assert main(args) == 0
    second_dir = max((run_root / "tiger_ml100k").iterdir())
    second = json.loads((second_dir / "metrics.json").read_text())
    assert second["rqvae/reused_cache"] == 1.0
    assert (embedding_file.stat().st_mtime_ns, ids_file.stat().st_mtime_ns) == stamps
    assert second["rqvae/collision_rate"] == first["rqvae/collision_rate"]
    assert second["test/ndcg@10"] == pytest.approx(first["test/ndcg@10"])  # same seed, same IDs, same model

    assert main([*args, "model.text_fields=[brand]"]) == 2  # no such item text: one line, exit status 2
    assert "none of the text fields" in capsys.readouterr().err
