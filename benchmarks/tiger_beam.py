"""Constrained beam search throughput for TIGER: users per second at beam 20, how it grows with the catalogue, and
what the trie costs against an unconstrained decode of the same model.

Two parts:

* **scaling** (always): a paper-size TIGER T5 (4+4 layers, d_model 128, 6 heads of 64, MLP 1024; random
  weights -- decoding cost does not depend on them) over synthetic catalogues of 1k..256k items with random
  3-level Semantic IDs (+ collision code). For each size: trie build time, users/s constrained vs unconstrained,
  and the search-only cost (the same beam search fed precomputed logits, i.e. without the decoder) to isolate
  what the constraint itself costs as the trie grows.
* **trained** (``checkpoint=`` of a tiger_beauty run): the same comparison on real test users, with the
  unconstrained decode's invalid-ID rate (beams that are no item) and both recalls.

Both build the model with ``zoo.build`` as :class:`GivenIdTiger`, a TIGER whose Semantic IDs are installed here
(random ones, or the checkpoint's) instead of coming from the ``semantic_ids`` stage.

    python -m benchmarks.tiger_beam [sizes=1000,4000,...] [users=256] [checkpoint=runs/.../best.ckpt]

Run it as a module from the repository root (the package installed).

Writes ``benchmarks/results/tiger_beam_search.json``. The machine is shared: timings carry the load average.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import cli, integer, integers, key_values, write_result
from zoo.build import build
from zoo.config import compose
from zoo.data.corpus import Corpus
from zoo.data.datamodule import SequentialDataModule
from zoo.errors import DataError
from zoo.models.tiger import T5StepDecoder, Tiger
from zoo.modules.beam_search import beam_search
from zoo.modules.rqvae import add_collision_codes

NUM_BEAMS = 20


class GivenIdTiger(Tiger):
    """TIGER without the ``semantic_ids`` stage: the caller installs the Semantic IDs after ``zoo.build``
    (``set_semantic_ids`` or a checkpoint's ``on_load_checkpoint``)."""

    stages = ()

    def prepare(self, datamodule) -> None:
        """Nothing to install from a stage."""


GIVEN_IDS = f"{__name__}:GivenIdTiger"  # model.name by import path (zoo.registry), not registered


def synthetic_model(num_items: int, seed: int = 0) -> tuple[Tiger, SequentialDataModule]:
    """A paper-size TIGER over ``num_items`` items with random Semantic IDs and random user histories."""
    rng = np.random.default_rng(seed)
    users = 512
    sequences = [rng.integers(1, num_items + 1, size=22).tolist() for _ in range(users)]
    corpus = Corpus.from_sequences(f"synthetic{num_items}", sequences, num_items=num_items)
    cfg = compose("tiger_beauty", ["data.eval_batch_size=128", f"model.name={GIVEN_IDS}"])
    torch.manual_seed(seed)
    model, datamodule = build(cfg, corpus=corpus)
    ids = add_collision_codes(rng.integers(0, 256, size=(num_items, 3)))  # 256^3 tuples: few collisions
    model.set_semantic_ids(torch.as_tensor(ids))
    return model.eval(), datamodule


def timed_decode(model: Tiger, batches: list[dict], constrained: bool) -> tuple[float, list[torch.Tensor]]:
    started = time.perf_counter()
    with torch.no_grad():
        items = [model.decode(b, NUM_BEAMS, constrained=constrained).items for b in batches]
    return time.perf_counter() - started, items


def search_only_seconds(model: Tiger, batches: list[dict]) -> float:
    """The constrained search fed logits recorded from the real decoder: the cost of the trie alone."""
    recorded: list[list[torch.Tensor]] = []
    with torch.no_grad():
        for b in batches:
            step = T5StepDecoder(model.t5, b["input_ids"], b["attention_mask"])
            logs: list[torch.Tensor] = []

            def recording(parents, tokens, step=step, logs=logs):
                out = step(parents, tokens)
                logs.append(out)
                return out

            beam_search(recording, model.trie, len(b["input_ids"]), NUM_BEAMS)
            recorded.append(logs)
    started = time.perf_counter()
    for b, logs in zip(batches, recorded):
        replay = iter(logs)
        beam_search(lambda parents, tokens, replay=replay: next(replay), model.trie, len(b["input_ids"]), NUM_BEAMS)
    return time.perf_counter() - started


def scaling(sizes: list[int], num_users: int) -> list[dict]:
    rows = []
    for size in sizes:
        started = time.perf_counter()
        model, datamodule = synthetic_model(size)
        build_s = time.perf_counter() - started
        batches = []
        for batch in datamodule.test_dataloader():
            batches.append(batch)
            if sum(len(b["target"]) for b in batches) >= num_users:
                break
        users = sum(len(b["target"]) for b in batches)
        constrained_s, ranked = timed_decode(model, batches, constrained=True)
        free_s, free_ranked = timed_decode(model, batches, constrained=False)
        search_s = search_only_seconds(model, batches)
        valid = torch.cat(ranked) > 0
        row = {
            "num_items": size,
            "trie_nodes": model.trie.num_nodes,
            "setup_s": round(build_s, 3),
            "users": users,
            "constrained_users_per_s": round(users / constrained_s, 2),
            "unconstrained_users_per_s": round(users / free_s, 2),
            "constraint_overhead": round(constrained_s / free_s - 1, 4),
            "search_only_users_per_s": round(users / search_s, 2),
            "search_share_of_constrained": round(search_s / constrained_s, 4),
            "constrained_all_valid": bool(valid.all()),
            "load_avg_1m": round(os.getloadavg()[0], 2),
        }
        print(row, flush=True)
        rows.append(row)
    return rows


def load_checkpoint(checkpoint: Path) -> dict:
    """A Lightning checkpoint read with ``weights_only=True``: tensors, containers and plain values only, never
    an arbitrary pickled object (a checkpoint from elsewhere cannot run code). The zoo saves its config as a
    plain container (``OmegaConf.to_container``), so nothing needs allow-listing; a checkpoint that holds other
    objects is refused with the one global it would need."""
    import pickle

    try:
        return torch.load(checkpoint, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else "unsupported object"
        raise DataError(f"checkpoint={checkpoint}: refused to unpickle it with weights_only=True ({first})") from None


def trained(checkpoint: Path, num_users: int) -> dict:
    """Constrained vs unconstrained decoding of a trained tiger run on its own test users."""
    from omegaconf import OmegaConf

    state = load_checkpoint(checkpoint)
    saved = OmegaConf.create(state["hyper_parameters"]["config"])  # the run's resolved config
    base = compose("tiger_beauty", [f"model.name={GIVEN_IDS}"])  # the Semantic IDs are the checkpoint's
    model_section = {k: v for k, v in saved.model.items() if k in base.model and k != "name"}  # today's keys
    # the history length: data.max_len (model.max_history in checkpoints written before it moved to data)
    max_len = saved.model.get("max_history", saved.data.get("max_len", base.data.max_len))
    data = {"eval_batch_size": saved.data.eval_batch_size, "max_len": max_len}
    cfg = OmegaConf.merge(base, {"model": model_section, "seed": saved.seed, "data": data})
    model, datamodule = build(cfg)
    model.on_load_checkpoint(state)
    model.load_state_dict(state["state_dict"])
    model.eval()
    batches = []
    for batch in datamodule.test_dataloader():
        batches.append(batch)
        if sum(len(b["target"]) for b in batches) >= num_users:
            break
    users = sum(len(b["target"]) for b in batches)
    targets = torch.cat([b["target"] for b in batches])
    constrained_s, ranked = timed_decode(model, batches, constrained=True)
    free_s, free_ranked = timed_decode(model, batches, constrained=False)
    ranked, free_ranked = torch.cat(ranked), torch.cat(free_ranked)

    def recall(lists: torch.Tensor, k: int) -> float:
        return float((lists[:, :k] == targets[:, None]).any(1).float().mean())

    return {
        "checkpoint": str(checkpoint),
        "users": users,
        "constrained_users_per_s": round(users / constrained_s, 2),
        "unconstrained_users_per_s": round(users / free_s, 2),
        "unconstrained_invalid_id_rate": round(float((free_ranked == 0).float().mean()), 4),
        "unconstrained_top1_invalid_rate": round(float((free_ranked[:, 0] == 0).float().mean()), 4),
        "constrained_invalid_id_rate": round(float((ranked == 0).float().mean()), 4),
        "constrained_recall@10": round(recall(ranked, 10), 4),
        "unconstrained_recall@10": round(recall(free_ranked, 10), 4),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def main(argv: list[str] | None = None) -> int:
    return cli(_main, __doc__, argv)


def _main(argv: list[str]) -> None:
    args = key_values(argv, {"sizes": "1000,4000,16000,64000,256000", "users": 256, "checkpoint": ""})
    sizes, users = integers(args, "sizes", minimum=1), integer(args, "users", minimum=1)
    checkpoint = Path(args["checkpoint"]) if args["checkpoint"] else None
    if checkpoint is not None and not checkpoint.is_file():
        raise DataError(f"checkpoint={checkpoint}: no such file")
    started = time.time()
    payload = {
        "what": "TIGER beam search (beam 20) users/s: trie-constrained vs unconstrained, vs catalogue size",
        "num_beams": NUM_BEAMS,
        "torch_threads": torch.get_num_threads(),
        "model": "paper-size T5 (4+4 layers, d_model 128, 6x64 heads, MLP 1024), encoder once per user, "
        "cross-attention K/V shared by a user's beams, self-attention KV cache per beam",
        "load_avg_start": [round(x, 2) for x in os.getloadavg()],
        "scaling": scaling(sizes, users),
    }
    if checkpoint is not None:
        payload["trained"] = trained(checkpoint, users)
    payload["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    path = write_result("tiger_beam_search", payload, started)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
