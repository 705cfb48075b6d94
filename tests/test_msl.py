"""MSL and ATS against brute-force references: the valid sets from a plain Python trie, LML as the special case,
the closed form of the adaptive temperature, and DDP statistics equal to one process's."""

from __future__ import annotations

import math
import os
import socket

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from zoo.losses import build_loss
from zoo.losses.msl import ATSConfig, MSLConfig, first_choice_node
from zoo.modules.trie import ItemTrie

VOCAB = 12
EOS = 11


def random_items(rng: np.random.Generator, count: int) -> list[list[int]]:
    """Distinct token sequences of lengths 2..5 over tokens 1..10, each ended by EOS."""
    seen: set[tuple[int, ...]] = set()
    while len(seen) < count:
        seen.add(tuple(rng.integers(1, 11, size=int(rng.integers(1, 5))).tolist()) + (EOS,))
    return [list(s) for s in sorted(seen)]


def msl(tau: float = 4.5):
    return build_loss(OmegaConf.structured(MSLConfig(name="msl", tau=tau)))


def ats(**kwargs):
    return build_loss(OmegaConf.structured(ATSConfig(name="msl_ats", **kwargs)))


def padded_batch(rng: np.random.Generator, items: list[list[int]], rows: int, prompt: int = 3):
    """Labels [rows, T]: -100 for a prompt part and padding, then one item's tokens; random logits."""
    chosen = [items[i] for i in rng.integers(0, len(items), size=rows)]
    width = prompt + max(len(s) for s in chosen)
    labels = torch.full((rows, width), -100, dtype=torch.long)
    for r, seq in enumerate(chosen):
        labels[r, width - len(seq) :] = torch.tensor(seq)
    logits = torch.from_numpy(rng.normal(0, 2, size=(rows, width, VOCAB))).float()
    return logits, labels


def reference_valid_sets(items: list[list[int]], labels: torch.Tensor) -> list[tuple[int, int, list[int]]]:
    """(row, position, sorted valid tokens) of every labelled position, from prefixes (no trie code)."""
    out = []
    for r, row in enumerate(labels.tolist()):
        prefix: list[int] = []
        for t, token in enumerate(row):
            if token == -100:
                continue
            valid = sorted({s[len(prefix)] for s in items if len(s) > len(prefix) and s[: len(prefix)] == prefix})
            out.append((r, t, valid))
            prefix.append(token)
    return out


def reference_msl(items, logits, labels, tau: float) -> float:
    terms = []
    for r, t, valid in reference_valid_sets(items, labels):
        if len(valid) <= 1:
            continue
        z = logits[r, t].double()
        terms.append(-z[labels[r, t]] / tau + torch.logsumexp(z[valid] / tau, 0))
    return float(tau * torch.stack(terms).mean())


@pytest.mark.parametrize("tau", [0.7, 1.0, 4.5])
def test_msl_equals_brute_force_reference(tau: float) -> None:
    rng = np.random.default_rng(0)
    items = random_items(rng, 30)
    logits, labels = padded_batch(rng, items, rows=16)
    loss = msl(tau)
    loss.connect(trie=ItemTrie(items, vocab_size=VOCAB))
    assert float(loss(logits, labels)) == pytest.approx(reference_msl(items, logits, labels, tau), rel=1e-5)


def test_msl_on_flattened_responses_equals_padded_rows() -> None:
    """Responses back to back in one row (the walk returns to the root after each item) give the same loss."""
    rng = np.random.default_rng(1)
    items = random_items(rng, 25)
    logits, labels = padded_batch(rng, items, rows=8)
    keep = labels != -100
    loss = msl()
    loss.connect(trie=ItemTrie(items, vocab_size=VOCAB))
    flat = loss(logits[keep].unsqueeze(0), labels[keep].unsqueeze(0))
    assert float(flat) == pytest.approx(float(loss(logits, labels)), rel=1e-6)


def test_msl_with_every_token_valid_and_tau_one_equals_lml() -> None:
    every_pair = [[a, b] for a in range(VOCAB) for b in range(VOCAB)]  # both positions: all VOCAB tokens valid
    rng = np.random.default_rng(2)
    labels = torch.from_numpy(rng.integers(0, VOCAB, size=(6, 2)))
    logits = torch.randn(6, 2, VOCAB)
    loss = msl(tau=1.0)
    loss.connect(trie=ItemTrie(every_pair, vocab_size=VOCAB))
    lml = build_loss(OmegaConf.create({"name": "lml"}))
    assert float(loss(logits, labels)) == pytest.approx(float(lml(logits, labels)), rel=1e-6)
    assert float(loss(logits, labels)) == pytest.approx(float(F.cross_entropy(logits.flatten(0, 1), labels.flatten())))


def test_msl_gradient_only_reaches_valid_tokens() -> None:
    rng = np.random.default_rng(3)
    items = random_items(rng, 20)
    logits, labels = padded_batch(rng, items, rows=6)
    logits.requires_grad_(True)
    loss = msl()
    loss.connect(trie=ItemTrie(items, vocab_size=VOCAB))
    loss(logits, labels).backward()
    allowed = torch.zeros_like(logits, dtype=torch.bool)
    for r, t, valid in reference_valid_sets(items, labels):
        if len(valid) > 1:
            allowed[r, t, valid] = True
    assert torch.all(logits.grad[~allowed] == 0)
    assert torch.all(logits.grad[allowed] != 0)


def test_msl_rejects_labels_off_the_trie_and_a_missing_trie() -> None:
    items = [[1, 2, EOS], [1, 3, EOS]]
    loss = msl()
    with pytest.raises(RuntimeError, match="connect"):
        loss(torch.randn(1, 3, VOCAB), torch.tensor([[1, 2, EOS]]))
    loss.connect(trie=ItemTrie(items, vocab_size=VOCAB))
    with pytest.raises(ValueError, match="not a valid trie continuation"):
        loss(torch.randn(1, 3, VOCAB), torch.tensor([[1, 4, EOS]]))


def test_first_choice_node_skips_a_shared_opening_token() -> None:
    """With a tokenizer that splits off the opening quote, every title starts with the same token: the first
    choice is one level down."""
    quote = 7
    trie = ItemTrie([[quote, 1, EOS], [quote, 2, 3, EOS], [quote, 4, EOS]], vocab_size=VOCAB)
    node = first_choice_node(trie)
    assert int(trie.num_children(torch.tensor([node]))[0]) == 3
    assert node == int(trie.step(torch.tensor([0]), torch.tensor([quote]))[0])


def closed_form_tau(items, logits, labels, eta: float, tau_min: float, tau_max: float) -> float:
    """tau_hat of the paper from the first-title-token positions (found by prefix, independently of the loss)."""
    n1 = len({s[0] for s in items})
    pos, valid_logits = [], []
    for r, t, valid in reference_valid_sets(items, labels):
        if len(valid) == n1 and (t == 0 or labels[r, t - 1] == -100):
            pos.append(float(logits[r, t, labels[r, t]]))
            valid_logits.extend(logits[r, t, valid].tolist())
    delta = np.mean(pos) - np.mean(valid_logits)
    var = np.var(valid_logits, ddof=1)
    c = math.log(eta * n1)
    tau_hat = (delta + math.sqrt(max(delta**2 - 2 * c * var, 0.0))) / (2 * c)
    return min(max(tau_hat, tau_min), tau_max)


@pytest.mark.parametrize("scale", [0.5, 5.0, 40.0])  # tau_hat 0.24 (clamped to 1.5), 4.13, 37.1 (clamped to 5)
def test_ats_matches_closed_form(scale: float) -> None:
    rng = np.random.default_rng(4)
    items = random_items(rng, 40)
    logits, labels = padded_batch(rng, items, rows=24)
    # make the target logit stand out by ``scale`` so tau_hat moves through the clamp range
    logits = logits + scale * F.one_hot(labels.clamp(min=0), VOCAB) * (labels != -100).unsqueeze(-1)
    loss = ats()
    loss.connect(trie=ItemTrie(items, vocab_size=VOCAB))
    loss.train()
    value = loss(logits, labels)
    tau_hat = closed_form_tau(items, logits, labels, eta=0.25, tau_min=1.5, tau_max=5.0)
    expected_tau = 0.95 * 1.5 + 0.05 * tau_hat
    assert float(loss.tau) == pytest.approx(expected_tau, rel=1e-6)
    assert float(value) == pytest.approx(reference_msl(items, logits, labels, expected_tau), rel=1e-5, abs=1e-6)
    assert "tau" in loss.state_dict()


def test_ats_warmup_eval_and_ema() -> None:
    rng = np.random.default_rng(5)
    items = random_items(rng, 40)
    logits, labels = padded_batch(rng, items, rows=24)
    loss = ats(warmup_steps=2, tau_init=2.0, tau_min=1.0)
    loss.connect(trie=ItemTrie(items, vocab_size=VOCAB))
    loss.train()
    for _ in range(2):
        loss(logits, labels)
        assert float(loss.tau) == pytest.approx(2.0)
    tau_hat = closed_form_tau(items, logits, labels, eta=0.25, tau_min=1.0, tau_max=5.0)
    loss(logits, labels)
    loss(logits, labels)
    assert float(loss.tau) == pytest.approx(0.95 * (0.95 * 2.0 + 0.05 * tau_hat) + 0.05 * tau_hat, rel=1e-6)
    before = float(loss.tau)
    loss.eval()
    loss(logits, labels)
    assert float(loss.tau) == before


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ats_rank(rank: int, world: int, port: int, items, logits, labels, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        loss = ats()
        loss.connect(trie=ItemTrie(items, vocab_size=VOCAB))
        loss.train()
        rows = slice(rank * len(labels) // world, (rank + 1) * len(labels) // world)
        loss(logits[rows], labels[rows])
        out[rank] = float(loss.tau)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_ats_statistics_are_gathered_across_ddp_ranks() -> None:
    """Two gloo ranks, each with half the batch (of unequal composition), reach the tau of one process with all."""
    rng = np.random.default_rng(6)
    items = random_items(rng, 40)
    logits, labels = padded_batch(rng, items, rows=20)
    single = ats()
    single.connect(trie=ItemTrie(items, vocab_size=VOCAB))
    single.train()
    single(logits, labels)
    ctx = torch.multiprocessing.get_context("spawn")
    out = ctx.Manager().dict()
    port = _free_port()
    procs = [ctx.Process(target=_ats_rank, args=(r, 2, port, items, logits, labels, out)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    assert out[0] == pytest.approx(float(single.tau), rel=1e-6)
    assert out[1] == pytest.approx(float(single.tau), rel=1e-6)
