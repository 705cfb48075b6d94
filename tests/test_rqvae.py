"""RQ-VAE: k-means init, dead-code restart, straight-through training, collision codes, and the Lightning stage."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zoo.config import compose
from zoo.models.rqvae import MONITOR, train_rqvae
from zoo.modules.rqvae import (
    RQVAE,
    ResidualQuantizer,
    add_collision_codes,
    codebook_stats,
    collision_rate,
    kmeans,
)


def test_rqvae_overfits_a_tiny_item_set_and_exports_unique_ids():
    torch.manual_seed(0)
    items = torch.randn(48, 24)
    model = RQVAE(24, hidden_dims=[64], latent_dim=8, num_levels=3, codebook_size=8, kmeans_iters=10)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    first = None
    for step in range(400):
        out = model(items)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        if step % 50 == 0:
            model.quantizer.restart_dead_codes(out.residuals)
        first = out.recon_loss.item() if first is None else first
    model.eval()
    final = model(items).recon_loss.item()
    assert final < 0.2 * first, (first, final)
    codes = model.encode_codes(items).numpy()
    assert collision_rate(codes) < 0.25  # 48 items over 8^3 code tuples: the codes spread out
    ids = add_collision_codes(codes)
    assert ids.shape == (48, 4)
    assert len(np.unique(ids, axis=0)) == 48
    np.testing.assert_array_equal(ids, add_collision_codes(model.encode_codes(items).numpy()))  # deterministic


def test_first_training_batch_initialises_codebooks_by_kmeans():
    torch.manual_seed(1)
    centres = torch.randn(8, 4) * 10
    points = (centres[:, None, :] + 0.01 * torch.randn(8, 30, 4)).reshape(-1, 4)
    quantizer = ResidualQuantizer(num_levels=2, codebook_size=8, dim=4, kmeans_iters=10).train()
    assert not bool(quantizer.initialized)
    out = quantizer(points)
    assert bool(quantizer.initialized)
    level0 = out.codes[:, 0].reshape(8, 30)
    assert (level0 == level0[:, :1]).all()  # every cluster is one code...
    assert len(set(level0[:, 0].tolist())) == 8  # ...and every code one cluster
    assert torch.cdist(quantizer.codebooks[0].detach(), centres).min(1).values.max() < 0.1


def test_kmeans_with_fewer_points_than_codes_keeps_every_code_near_data():
    points = torch.tensor([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]])
    centroids = kmeans(points, k=6, iters=5, generator=torch.Generator().manual_seed(0))
    assert centroids.shape == (6, 2)
    assert torch.cdist(centroids, points).min(1).values.max() < 0.1


def test_dead_codes_restart_on_residuals_of_the_batch():
    quantizer = ResidualQuantizer(num_levels=1, codebook_size=5, dim=3)
    quantizer.usage[0, 0] = 7.0  # only code 0 was used
    residuals = torch.arange(30, dtype=torch.float32).reshape(1, 10, 3)
    before = quantizer.codebooks[0, 0].detach().clone()
    restarted = quantizer.restart_dead_codes(residuals, torch.Generator().manual_seed(0))
    assert restarted == 4
    assert torch.equal(quantizer.codebooks[0, 0].detach(), before)
    for code in range(1, 5):
        assert any(torch.equal(quantizer.codebooks[0, code].detach(), r) for r in residuals[0])
    assert quantizer.usage.sum() == 0


def test_straight_through_gradient_reaches_the_encoder():
    model = RQVAE(6, hidden_dims=[8], latent_dim=4, num_levels=2, codebook_size=4).train()
    out = model(torch.randn(16, 6))
    out.recon_loss.backward()
    assert model.encoder[0].weight.grad.abs().sum() > 0
    assert model.quantizer.codebooks.grad is None  # codes learn from the codebook loss only


def test_collision_codes_number_duplicates_in_item_order():
    codes = np.array([[1, 2], [1, 2], [0, 0], [1, 2], [0, 1]])
    assert add_collision_codes(codes)[:, -1].tolist() == [0, 1, 0, 2, 0]
    assert collision_rate(codes) == pytest.approx(1 - 3 / 5)


def test_codebook_stats_usage_and_perplexity():
    uniform = np.stack([np.arange(16), np.zeros(16, dtype=int)], axis=1)
    stats = codebook_stats(uniform, codebook_size=16)
    assert stats["usage_l0"] == 1.0 and stats["perplexity_l0"] == pytest.approx(16.0)
    assert stats["usage_l1"] == pytest.approx(1 / 16) and stats["perplexity_l1"] == pytest.approx(1.0)


def test_lightning_stage_trains_and_logs_catalogue_metrics(tmp_path):
    cfg = compose(
        "rqvae_ml100k",
        [
            f"run_root={tmp_path}",
            "trainer.enable_progress_bar=false",
            "logger.name=none",
            "model.rqvae.hidden_dims=[32]",
            "model.rqvae.latent_dim=8",
            "model.rqvae.codebook_size=16",
            "model.rqvae.epochs=3",
            "model.rqvae.eval_every=1",
            "model.rqvae.batch_size=32",
            "model.rqvae.restart_every=2",
        ],
    )
    embeddings = np.random.default_rng(0).normal(size=(100, 12)).astype(np.float32)
    module, is_zero = train_rqvae(cfg, embeddings, tmp_path / "stage", single_device=True)
    assert is_zero
    logged = module.trainer.callback_metrics
    for key in (MONITOR, "rqvae/recon_mse", "rqvae/collision_rate", "rqvae/usage_l2", "rqvae/perplexity_l0"):
        assert key in logged, key
    codes, metrics = module.catalogue_metrics()
    assert codes.shape == (100, 3) and codes.max() < 16
    assert 0.0 <= metrics["rqvae/collision_rate"] < 1.0
    assert (tmp_path / "stage" / "checkpoints" / "last.ckpt").is_file()
    # the stage keeps its lowest loss: the best checkpoint's score is at most the last epoch's
    checkpoint = module.trainer.checkpoint_callback
    assert checkpoint.mode == "min"
    assert float(checkpoint.best_model_score) <= float(logged[MONITOR]) + 1e-9


def test_semantic_id_stage_key_follows_the_seed_and_the_rqvae_settings():
    """The Semantic IDs are cached under a key of the RQ-VAE section and the seed (``zoo.stages``)."""
    from zoo.stages import SemanticIdStage, stage_key

    stage = SemanticIdStage()

    def key(*overrides: str) -> str:
        cfg = compose("rqvae_ml100k", list(overrides))
        return stage_key(stage, stage.inputs(cfg, None), "corpus", {})

    assert key() == key()
    assert key() != key("seed=43")
    assert key() != key("model.rqvae.codebook_size=16")
