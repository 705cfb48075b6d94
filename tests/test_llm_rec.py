"""The MSL data source (fixtures and the real files) and the generative LLM recommender end to end: prompts and
labels line up, each loss drops in by name, and a tiny model learns a deterministic next-title rule."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATASETS, SHRINK, requires_shared_data
from omegaconf import OmegaConf

from zoo.build import build
from zoo.config import DataConfig, compose
from zoo.data.corpus import Corpus
from zoo.data.prompts import HEADER, RESPONSE, domain_prompt
from zoo.data.sources.msl import msl_source
from zoo.errors import DataError
from zoo.models.llm_rec import LLMRec
from zoo.run import run

BOOKS = {"1": "Dune", "2": "Emma &amp; Co", "3": "Persuasion", "4": "Hamlet", "5": "Ulysses"}


def write_msl(folder: Path, train_rows: list[str], test_rows: list[str], valid_rows: list[str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "id2name4Rec.json").write_text(json.dumps(BOOKS))
    header = "user_id,item_ids,timestamp\n"
    (folder / "train.csv").write_text(header + "".join(r + "\n" for r in train_rows))
    (folder / "test.csv").write_text(header + "".join(r + "\n" for r in test_rows))
    if valid_rows is not None:
        (folder / "valid.csv").write_text(header + "".join(r + "\n" for r in valid_rows))
    return folder


def data_cfg(path, root=None):
    return OmegaConf.structured(DataConfig(name="msl", path=None if path is None else str(path), root=root))


def test_msl_source_reads_fixed_splits_and_titles(tmp_path) -> None:
    folder = write_msl(
        tmp_path / "Books",
        ['7,"[1, 2, 3]",10', '8,"[2, 4]",20', '7,"[2, 3, 4]",30'],
        ['9,"[3, 5, 1]",40', '8,"[4, 5]",50'],
    )
    corpus = msl_source(data_cfg(folder))
    assert corpus.num_items == 5 and corpus.title(2) == "Emma & Co"
    train, test = corpus.fixed_splits["train"], corpus.fixed_splits["test"]
    assert train.targets.tolist() == [3, 4, 4] and train.offsets.tolist() == [0, 2, 3, 5]
    assert train.history.tolist() == [1, 2, 2, 2, 3]
    assert test.targets.tolist() == [1, 5]
    assert corpus.fixed_splits["valid"] is test  # no valid.csv: validation reads the test rows
    # sequences: latest training row, or the earliest evaluation history -- never an evaluation target
    assert [corpus.user_ids[u] for u in range(corpus.num_users)] == ["7", "8", "9"]
    assert [corpus.sequence(u).tolist() for u in range(3)] == [[2, 3, 4], [2, 4], [3, 5]]


def test_msl_source_prefers_the_10k_sample_a_named_csv_and_valid_file(tmp_path) -> None:
    folder = write_msl(tmp_path / "Books", ['1,"[1, 2]",1'], ['1,"[2, 3]",2'], valid_rows=['1,"[1, 4]",3'])
    (folder / "train_10000.csv").write_text('user_id,item_ids,timestamp\n1,"[4, 5]",1\n')
    corpus = msl_source(data_cfg(folder))
    assert corpus.fixed_splits["train"].targets.tolist() == [5]
    assert corpus.fixed_splits["valid"].targets.tolist() == [4]
    corpus = msl_source(data_cfg(folder / "train.csv"))
    assert corpus.fixed_splits["train"].targets.tolist() == [2]


def test_msl_source_finds_a_dataset_name_under_the_data_root(tmp_path) -> None:
    write_msl(tmp_path / "MSL" / "Books", ['1,"[1, 2]",1'], ['1,"[2, 3]",2'])
    assert msl_source(data_cfg("Books", root=str(tmp_path))).num_items == 5


@pytest.mark.parametrize(
    "row, message",
    [
        ('1,"[1, 9]",1', r"test.csv:3: item id 9 is not in id2name4Rec.json"),
        ('1,"[1, 2",1', r"test.csv:3: item_ids is not a JSON list"),
        ('1,"[1]",1', r"test.csv:3: item_ids needs a history and a target"),
        ('1,"[1, 2]"', r"test.csv:3: expected 3 fields, got 2"),
        ('1,"[1, 2]",noon', r"test.csv:3: timestamp 'noon' is not a number"),
    ],
)
def test_msl_source_errors_name_file_and_line(tmp_path, row, message) -> None:
    folder = write_msl(tmp_path / "Books", ['1,"[1, 2]",1'], ['2,"[3, 4]",5', row])
    with pytest.raises(DataError, match=message):
        msl_source(data_cfg(folder))


def test_msl_source_missing_files_are_data_errors(tmp_path) -> None:
    with pytest.raises(DataError, match="needs data.path"):
        msl_source(data_cfg(None))
    with pytest.raises(DataError, match="no dataset folder"):
        msl_source(data_cfg("Nowhere", root=str(tmp_path)))
    folder = write_msl(tmp_path / "Books", ['1,"[1, 2]",1'], [])
    (folder / "test.csv").unlink()
    with pytest.raises(DataError, match="missing .*test.csv"):
        msl_source(data_cfg(folder))


@requires_shared_data()
def test_msl_books_real_files() -> None:
    corpus = msl_source(data_cfg(SHARED_DATASETS / "MSL" / "Amazon_Books"))
    splits = corpus.fixed_splits
    assert corpus.num_items == 6344
    assert (len(splits["train"]), len(splits["test"])) == (10000, 4383)
    assert int((splits["train"].offsets[1:] - splits["train"].offsets[:-1]).max()) == 10
    assert "&amp;" not in "".join(corpus.item_text["title"])


def cycle_corpus(num_items: int = 8, users: int = 64, length: int = 6) -> Corpus:
    """Every user walks the item cycle 1 -> 2 -> ... -> N -> 1 from a different start: the next item is a
    deterministic function of the last one."""
    words = ["apple", "river", "stone", "cloud", "tiger", "maple", "ocean", "ember", "frost", "lunar"]
    seqs = [[(u + t) % num_items + 1 for t in range(length)] for u in range(users)]
    corpus = Corpus.from_sequences("cycle", seqs, num_items=num_items)
    corpus.item_text["title"] = [""] + [f"the {words[i]} book" for i in range(num_items)]
    return corpus


def llm_cfg(loss: str = "lml", **extra):
    overrides = [
        "data.name=ml100k",
        "data.batch_size=16",
        "data.eval_batch_size=16",
        "model.tiny_hidden=32",
        "model.tiny_heads=2",
        "data.max_len=3",
        f"loss.name={loss}",
        "eval.num_beams=8",
        "eval.ks=[1,5]",
    ]
    return compose("llmrec_ml100k", overrides + [f"{k}={v}" for k, v in extra.items()])


def llm_build(loss: str = "lml", **extra):
    """``zoo.build`` of the tiny LLMRec on the cycle corpus: (model, datamodule)."""
    return build(llm_cfg(loss=loss, **extra), corpus=cycle_corpus())


def test_llmrec_batches_put_the_target_title_after_the_prompt() -> None:
    model, dm = llm_build()
    assert dm.max_len == 3
    batch = next(iter(dm.test_dataloader()))
    tok = model.backbone.tokenizer
    instruction, prefix = domain_prompt("movies")
    for row in range(3):
        labels = batch["labels"][row]
        response = batch["input_ids"][row][labels != -100].tolist()
        assert response == model.titles.response(int(batch["target"][row]))
        assert len(batch["history"][row]) == 3  # data.max_len: the prompt lists the last 3 items
        history = ", ".join(f'"{model.titles.titles[i]}"' for i in batch["history"][row].tolist() if i)
        text = f"{HEADER}### Instruction:\n{instruction}\n\n### Input:\n{prefix}{history}{RESPONSE}"
        prompt = batch["prompt_ids"][row][batch["prompt_mask"][row].bool()].tolist()
        assert prompt == tok(text, add_special_tokens=False)["input_ids"]  # WordPiece: assembly == whole text
        full = batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()
        assert full == prompt + response


@pytest.mark.parametrize("loss", ["lml", "msl", "msl_ats"])
def test_each_token_loss_drops_in_by_name(loss) -> None:
    torch.manual_seed(0)
    model, dm = llm_build(loss=loss)
    batch = next(iter(dm.train_dataloader()))
    value = model.compute_loss(batch)
    value.backward()
    assert math.isfinite(float(value)) and float(value) > 0
    assert model.backbone.model.get_input_embeddings().weight.grad.abs().sum() > 0
    if loss == "msl_ats":  # one adaptive step taken (an untrained model's tau_hat is clamped up to 1.5)
        assert int(model.loss.steps) == 1 and 1.5 <= float(model.loss.tau) <= 5.0


@pytest.mark.slow
def test_msl_ats_run_end_to_end_logs_tau(run_root) -> None:
    overrides = [
        *SHRINK,
        f"run_root={run_root}",
        "loss.name=msl_ats",
        "model.tiny_hidden=32",
        "trainer.log_every_n_steps=1",
    ]
    metrics = run(compose("llmrec_ml100k", overrides))
    assert all(math.isfinite(v) for v in metrics.values())
    (run_dir,) = list(run_root.glob("llmrec_ml100k/*"))
    assert "train/tau" in (run_dir / "logs" / "csv" / "metrics.csv").read_text().splitlines()[0]


@pytest.mark.slow
def test_tiny_llm_learns_a_deterministic_next_title(one_thread) -> None:
    """Trained on the item cycle, the model must rank the true next item first for most test users (a shift or
    label misalignment anywhere in prompts, logits or decoding would leave it at chance, 1/8). About 8 s of CPU."""
    torch.manual_seed(0)
    model, dm = llm_build(loss="msl", seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    model.train()
    for _ in range(10):
        for batch in dm.train_dataloader():
            optimizer.zero_grad()
            model.compute_loss(batch).backward()
            optimizer.step()
    model.eval()
    hits = []
    for batch in dm.test_dataloader():
        ranked = model.rank(batch, 8)
        hits.append(ranked[:, 0] == batch["target"])
        assert all(len(set(r.tolist()) - {0}) == len([i for i in r.tolist() if i]) for r in ranked)  # no duplicates
    assert torch.cat(hits).float().mean() > 0.8


def saved_backbone(folder: Path, seed: int) -> Path:
    """A "pretrained" causal LM on disk, as a user's Hugging Face checkpoint would be: tiny-llama weights of
    ``seed`` and the bundled tokenizer, written with ``save_pretrained``."""
    from zoo.modules.llm import CausalLMBackbone

    torch.manual_seed(seed)
    backbone = CausalLMBackbone(llm_cfg().model)
    backbone.model.save_pretrained(folder)
    backbone.tokenizer.save_pretrained(folder)
    return folder


def test_lora_checkpoints_leave_out_the_pretrained_weights_and_reload_exactly(tmp_path) -> None:
    import lightning as L

    from zoo.errors import ConfigError

    path = saved_backbone(tmp_path / "backbone", seed=0)
    cfg = llm_cfg(**{"model.backbone": str(path), "model.lora_r": 2, "model.lora_dropout": 0.0})
    model, dm = build(cfg, corpus=cycle_corpus())
    trainer = L.Trainer(
        max_epochs=1, limit_train_batches=2, limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, datamodule=dm)
    trainer.save_checkpoint(tmp_path / "lora.ckpt")

    saved = torch.load(tmp_path / "lora.ckpt", weights_only=False)["state_dict"]
    trained = model.state_dict()
    assert saved and all("lora_" in name for name in saved)  # adapters only: the backbone is not in the file
    assert set(trained) - set(saved) == set(model.reloadable_frozen_names())
    assert any(not torch.equal(trained[n], LLMRec(cfg, dm).state_dict()[n]) for n in saved)  # training moved them

    fresh = LLMRec(cfg, dm)  # a new process: the backbone from disk, adapters from the checkpoint
    L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, limit_test_batches=1).test(
        fresh, datamodule=dm, ckpt_path=tmp_path / "lora.ckpt", verbose=False
    )
    assert all(torch.equal(fresh.state_dict()[n], trained[n]) for n in trained)

    other = llm_cfg(**{"model.backbone": str(saved_backbone(tmp_path / "other", seed=1)), "model.lora_r": 2})
    with pytest.raises(ConfigError, match="other frozen backbone weights"):
        L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, limit_test_batches=1).test(
            LLMRec(other, dm), datamodule=dm, ckpt_path=tmp_path / "lora.ckpt", verbose=False
        )


def test_tiny_llama_checkpoints_keep_every_weight() -> None:
    """tiny-llama is initialised at random, so nothing can be left out of its checkpoints, LoRA or not."""
    model, dm = llm_build()
    assert model.reloadable_frozen_names() == []
    assert LLMRec(llm_cfg(**{"model.lora_r": 2}), dm).reloadable_frozen_names() == []
