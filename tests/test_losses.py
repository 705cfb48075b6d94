"""The item losses of the registry, each checked against its formula written out independently here."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from zoo.errors import ConfigError
from zoo.losses import LOSSES, build_loss
from zoo.losses.sampling import PopularitySampler, uniform_negatives

NUM_ITEMS, DIM, ROWS = 9, 4, 6


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread is faster, and far faster on a shared, oversubscribed CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class RecordingScorer:
    """A tied-embedding scorer that remembers which items the loss asked about."""

    def __init__(self, num_items: int = NUM_ITEMS, dim: int = DIM) -> None:
        self.num_items = num_items
        self.table = torch.randn(num_items + 1, dim, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        self.asked: list[torch.Tensor] = []

    def score_all(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden @ self.table.T

    def score_items(self, hidden: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        self.asked.append(items.clone())
        return (hidden.unsqueeze(1) * self.table[items]).sum(-1)

    def dot(self, hidden_row: torch.Tensor, item: int) -> float:
        return float(sum(hidden_row[j] * self.table[item, j] for j in range(len(hidden_row))))


def make_loss(name: str, **fields):
    cfg = OmegaConf.merge(OmegaConf.structured(LOSSES.get(name).Config), {"name": name, **fields})
    return build_loss(cfg)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


@pytest.fixture
def batch():
    gen = torch.Generator().manual_seed(11)
    hidden = torch.randn(ROWS, DIM, generator=gen, dtype=torch.float64)
    targets = torch.randint(1, NUM_ITEMS + 1, (ROWS,), generator=gen)
    return hidden, targets


def test_item_losses_are_registered_as_item_kind():
    for name in ("ce", "bce", "bpr", "sampled_softmax"):
        assert LOSSES.get(name).kind == "item"


def test_ce_matches_full_softmax_formula(batch):
    hidden, targets = batch
    scorer = RecordingScorer()
    got = make_loss("ce")(hidden, targets, scorer)
    expected = 0.0
    for row in range(ROWS):
        logits = [scorer.dot(hidden[row], i) for i in range(1, NUM_ITEMS + 1)]  # padding excluded
        log_z = math.log(sum(math.exp(v) for v in logits))
        expected += -(logits[int(targets[row]) - 1] - log_z)
    assert float(got) == pytest.approx(expected / ROWS, rel=1e-5)


def test_bce_matches_formula_with_its_sampled_negatives(batch):
    hidden, targets = batch
    scorer = RecordingScorer()
    got = make_loss("bce", num_negatives=2)(hidden, targets, scorer)
    (items,) = scorer.asked
    assert items.shape == (ROWS, 3) and torch.equal(items[:, 0], targets)
    negatives = items[:, 1:]
    assert (negatives != targets.view(-1, 1)).all() and (negatives >= 1).all() and (negatives <= NUM_ITEMS).all()
    expected = 0.0
    for row in range(ROWS):
        expected -= math.log(sigmoid(scorer.dot(hidden[row], int(targets[row]))))
        for neg in negatives[row].tolist():
            expected -= math.log(1.0 - sigmoid(scorer.dot(hidden[row], neg)))
    assert float(got) == pytest.approx(expected / ROWS, rel=1e-6)


def test_bpr_matches_formula_with_its_sampled_negatives(batch):
    hidden, targets = batch
    scorer = RecordingScorer()
    got = make_loss("bpr", num_negatives=3)(hidden, targets, scorer)
    negatives = scorer.asked[0][:, 1:]
    terms = []
    for row in range(ROWS):
        pos = scorer.dot(hidden[row], int(targets[row]))
        terms += [-math.log(sigmoid(pos - scorer.dot(hidden[row], neg))) for neg in negatives[row].tolist()]
    assert float(got) == pytest.approx(sum(terms) / len(terms), rel=1e-6)


def test_uniform_sampled_softmax_matches_formula(batch):
    hidden, targets = batch
    scorer = RecordingScorer()
    got = make_loss("sampled_softmax", num_negatives=4)(hidden, targets, scorer)
    negatives = scorer.asked[0][:, 1:]
    assert negatives.shape == (ROWS, 4) and (negatives != targets.view(-1, 1)).all()
    expected = 0.0
    for row in range(ROWS):
        pos = scorer.dot(hidden[row], int(targets[row]))
        denom = math.exp(pos) + sum(math.exp(scorer.dot(hidden[row], n)) for n in negatives[row].tolist())
        expected -= pos - math.log(denom)
    assert float(got) == pytest.approx(expected / ROWS, rel=1e-6)


@pytest.mark.parametrize("logq", [True, False])
def test_popularity_sampled_softmax_matches_formula_with_logq_and_hit_removal(batch, logq):
    hidden, targets = batch
    counts = torch.tensor([0, 50, 1, 0, 7, 30, 2, 9, 3, 12])  # index 0 = padding; item 3 never seen
    loss = make_loss("sampled_softmax", num_negatives=25, sampler="popularity", alpha=0.5, logq_correction=logq)
    loss.connect(item_counts=counts)
    scorer = RecordingScorer()
    got = loss(hidden, targets, scorer)
    negatives = scorer.asked[0][:, 1:]
    weights = [0.0] + [max(int(c), 1) ** 0.5 for c in counts[1:]]
    q = [w / sum(weights) for w in weights]
    assert (negatives != 0).all()
    assert (negatives == targets.view(-1, 1)).any(), "with 25 popular draws some accidental hits are expected"
    expected = 0.0
    for row in range(ROWS):
        t = int(targets[row])

        def corrected(item: int) -> float:
            return scorer.dot(hidden[row], item) - (math.log(q[item]) if logq else 0.0)  # noqa: B023

        denom = math.exp(corrected(t)) + sum(math.exp(corrected(n)) for n in negatives[row].tolist() if n != t)
        expected -= corrected(t) - math.log(denom)
    assert float(got) == pytest.approx(expected / ROWS, rel=1e-6)


def test_popularity_sampling_without_counts_is_a_config_error(batch):
    hidden, targets = batch
    with pytest.raises(ConfigError, match="item counts"):
        make_loss("sampled_softmax", sampler="popularity")(hidden, targets, RecordingScorer())


@pytest.mark.parametrize(
    ("name", "fields", "message"),
    [
        ("sampled_softmax", {"sampler": "zipf"}, "unknown loss.sampler"),
        ("sampled_softmax", {"num_negatives": 0}, "num_negatives"),
        ("bce", {"num_negatives": 0}, "num_negatives"),
        ("bpr", {"num_negatives": -1}, "num_negatives"),
    ],
)
def test_bad_loss_settings_are_config_errors(name, fields, message):
    with pytest.raises(ConfigError, match=message):
        make_loss(name, **fields)


@pytest.mark.parametrize(
    ("name", "fields"),
    [("bce", {}), ("bpr", {}), ("sampled_softmax", {}), ("sampled_softmax", {"sampler": "popularity"})],
)
def test_negative_sampling_is_reproducible_under_seed_everything(batch, name, fields):
    hidden, targets = batch
    loss = make_loss(name, **fields)
    loss.connect(item_counts=torch.arange(NUM_ITEMS + 1))
    drawn = []
    for seed in (5, 5, 6):
        L.seed_everything(seed, verbose=False)
        scorer = RecordingScorer()
        loss(hidden, targets, scorer)
        drawn.append(scorer.asked[0])
    assert torch.equal(drawn[0], drawn[1])
    assert not torch.equal(drawn[0], drawn[2])


def test_uniform_negatives_cover_every_other_item_evenly():
    torch.manual_seed(0)
    targets = torch.full((20000,), 3)
    counts = torch.bincount(uniform_negatives(targets, 1, 5).flatten(), minlength=6)
    assert counts[0] == 0 and counts[3] == 0
    assert torch.allclose(counts[[1, 2, 4, 5]].float() / 20000, torch.full((4,), 0.25), atol=0.015)


def test_popularity_sampler_draws_in_proportion_to_counts():
    torch.manual_seed(0)
    sampler = PopularitySampler(torch.tensor([99, 1, 3, 6]), alpha=1.0)
    freq = torch.bincount(sampler.sample(10000, 3).flatten(), minlength=4).float() / 30000
    assert freq[0] == 0
    assert torch.allclose(freq[1:], torch.tensor([0.1, 0.3, 0.6]), atol=0.015)
    assert torch.allclose(sampler.log_q(torch.tensor([1, 3])), torch.tensor([0.1, 0.6]).log(), atol=1e-6)


def test_sampled_losses_backpropagate_to_hidden_and_table(batch):
    hidden, targets = batch
    for name in ("ce", "bce", "bpr", "sampled_softmax"):
        scorer = RecordingScorer()
        scorer.table.requires_grad_(True)
        h = hidden.clone().requires_grad_(True)
        make_loss(name)(h, targets, scorer).backward()
        assert h.grad is not None and h.grad.abs().sum() > 0, name
        assert scorer.table.grad is not None and scorer.table.grad.abs().sum() > 0, name
