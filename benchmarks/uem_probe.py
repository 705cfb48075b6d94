"""Does a trained UEM read its soft prompts? A probe of one run's best checkpoint on a sample of users.

For ``users`` users (seeded sample) the test input (every item but the last) goes through the model as the test
loop builds it (``zoo.load``'s ``Recommender.batch``), and the probe reports

* **scale**: the RMS of the soft prompts against the RMS of the LM's token embeddings;
* **spread**: per soft-prompt slot, the across-user standard deviation relative to the slot's mean vector (0: the
  slot is the same for every user);
* **use**: the KL divergence of the first title token's distribution when each user's soft prompts are replaced by
  another user's (a random permutation of the sample), and the share of users whose top-10 changes then;
* **personalisation of the output**: distinct items among the users' top-10 lists and distinct top-1 items.

A model that ignores its soft prompts gives a KL near 0, an unchanged top-10 and the same list for every user.

A model trained with the title-alignment term (``model.align_weight`` > 0) also gets the test NDCG@10 of that
term's own ranking (each user's mean soft prompt against every item's mean title-token embedding, over every user,
unmasked), beside most-popular ranked by the same training counts: what the module alone knows of the next item.

    python -m benchmarks.uem_probe run=RUN_DIR [users=64] [seed=0] [name=uem_probe]

Writes ``benchmarks/results/<name>.json``; ``run`` is a ``zoo.run`` directory of a ``uem`` model, or of an
``llmrec`` model (the history as text), for which only the personalisation of the output is measured.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import cli, integer, key_values, ndcg_at, write_result

DOC = __doc__


def probe(model, batch: dict, swapped: dict) -> dict:
    """The scale / spread / use numbers of the module docstring for one evaluation batch of a UEM model; ``swapped``
    is the batch of the same users permuted (row i: another user's history and ratings in the same prompt frame)."""
    backbone = model.backbone
    table = backbone.model.get_input_embeddings().weight.detach().float()
    with torch.no_grad():
        tokens, present = model.user_tokens(batch)  # [B, S, d] and which slots hold a soft prompt
        prompts, others = model.soft_prompts(batch), model.soft_prompts(swapped)
        own, _ = backbone.prefill(batch["prompt_ids"], batch["prompt_mask"], prompts)
        other, _ = backbone.prefill(swapped["prompt_ids"], swapped["prompt_mask"], others)
        bias = getattr(model, "logit_bias", None)  # model.user_bias: the first token's logits carry it too
        if bias is not None and bias(batch, prompts) is not None:
            own, other = own + bias(batch, prompts), other + bias(swapped, others)
    logp, logq = own.float().log_softmax(-1), other.float().log_softmax(-1)
    kl = (logp.exp() * (logp - logq)).sum(-1)
    tokens, spread = tokens.float(), []
    for slot in range(tokens.shape[1]):  # per_item: a slot is a history position, absent for short histories
        rows = tokens[present[:, slot], slot]
        if len(rows) >= 2:
            spread.append(float(rows.std(0).norm() / rows.mean(0).norm().clamp(min=1e-12)))
    return {
        "soft_prompt_rms": round(float(tokens[present].pow(2).mean().sqrt()), 4),
        "token_embedding_rms": round(float(table.pow(2).mean().sqrt()), 4),
        "spread_per_slot": [round(x, 4) for x in spread],
        "first_token_kl_shuffled_mean": float(kl.mean()),
        "first_token_kl_shuffled_max": float(kl.max()),
    }


def measure(run: str | Path, users: int = 64, seed: int = 0) -> dict:
    """The probe's numbers for the run directory ``run`` (a uem or llmrec run) on ``users`` sampled users."""
    import zoo
    from zoo.data.loading import load_corpus
    from zoo.errors import ConfigError

    rec = zoo.load(run)
    model = rec.model
    if rec.cfg.model.name != "uem" and not hasattr(model, "soft_prompts"):
        raise ConfigError(f"{run}: model '{rec.cfg.model.name}' is not a generative LLM recommender")
    soft = hasattr(model, "user_module")  # else (llmrec) only the output's personalisation is measured
    model.eval()
    corpus = load_corpus(rec.cfg.data)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(corpus.num_users, size=min(users, corpus.num_users), replace=False))
    histories = [corpus.items[corpus.offsets[u] : corpus.offsets[u + 1] - 1].tolist() for u in sample]
    ids = [int(u) for u in sample]
    permutation = rng.permutation(len(sample))
    # UEM's prompt frame is the same for every user, so giving row i the permuted user's history (and ratings) is
    # giving it that user's soft prompts, whatever their number (model.tokens=per_item: one per history item)
    other_histories, other_ids = [histories[p] for p in permutation], [ids[p] for p in permutation]
    stats = probe(model, rec.batch(histories, ids), rec.batch(other_histories, other_ids)) if soft else {}
    top, _ = rec.top_k(histories, ids, 10, False)
    top = np.asarray(top)
    if soft:
        shuffled, _ = rec.top_k(other_histories, other_ids, 10, False)
        changed = float(np.mean([set(a) != set(b) for a, b in zip(top, np.asarray(shuffled))]))
        stats["top10_changed_when_shuffled"] = changed
        if float(rec.cfg.model.get("align_weight", 0) or 0) > 0:
            stats.update(alignment_head(rec, corpus))
    return {
        "run": str(Path(run)),
        "recipe": str(rec.cfg.get("recipe", "")),
        "model": str(rec.cfg.model.name),
        "prompt_scale": str(rec.cfg.model.get("prompt_scale", "free (before the option)")) if soft else None,
        "users": len(sample),
        "seed": seed,
        **stats,
        "distinct_items_in_top10s": int(len(np.unique(top))),
        "distinct_top1": int(len(np.unique(top[:, 0]))),
    }


def body(argv: list[str]) -> None:
    from zoo.errors import ConfigError

    settings = key_values(argv, {"run": None, "users": "64", "seed": "0", "name": "uem_probe"})
    if not settings["run"]:
        raise ConfigError("run= is required: a zoo.run directory of a uem model")
    users, seed = integer(settings, "users", 2), integer(settings, "seed", 0)
    torch.set_num_threads(1)
    started = time.time()
    found = measure(settings["run"], users, seed)
    write_result(
        settings["name"],
        {"what": "whether a trained UEM reads its soft prompts (see benchmarks/uem_probe.py)", **found},
        started,
    )


def alignment_head(rec, corpus, chunk: int = 64) -> dict:
    """Test NDCG@10 of the alignment term's ranking (``alignment_logits``: with ``model.align_popularity`` its
    popularity feature too) on every user (input: all items but the last), and of most-popular by the same input
    counts."""
    model = rec.model
    users = np.arange(corpus.num_users)
    histories = [corpus.items[corpus.offsets[u] : corpus.offsets[u + 1] - 1].tolist() for u in users]
    targets = np.array([corpus.items[corpus.offsets[u + 1] - 1] for u in users]) - 1  # row of the item
    counts = np.bincount(np.concatenate(histories), minlength=corpus.num_items + 1)[1:]
    ranks = []
    with torch.no_grad():
        for start in range(0, len(users), chunk):
            batch = rec.batch(histories[start : start + chunk], [int(u) for u in users[start : start + chunk]])
            scores = model.alignment_logits(batch, model.soft_prompts(batch)).float()  # the term's own scorer
            own = scores.gather(1, torch.from_numpy(targets[start : start + chunk])[:, None])
            ranks.append((scores > own).sum(1).numpy())
    popular = np.array([(counts > counts[t]).sum() for t in targets])
    return {
        "alignment_head_test_ndcg@10": round(float(ndcg_at(np.concatenate(ranks), 10).mean()), 5),
        "most_popular_by_input_counts_test_ndcg@10": round(float(ndcg_at(popular, 10).mean()), 5),
        "alignment_head_users": int(len(users)),
    }


if __name__ == "__main__":
    sys.exit(cli(body, DOC))
