"""Throughput of local text generation (``zoo.llm_text.HFTextGenerator``: batched greedy decoding with the KV
cache) with the offline pretrained backbone, at batch sizes 1, 8 and 32.

``python -m benchmarks.llm_text_throughput [backbone=smollm2-135m] [batches=1,8,32] [new_tokens=64]
[threads=0] [out=llm_text_throughput]`` writes ``benchmarks/results/<out>.json``: per batch size the prompts,
the generated tokens (up to each row's EOS), the wall time and tokens/s, and whether rows stopped early at EOS.
The prompts are PALR's user-profile prompts of the first users of MovieLens-100K (the embedded dataset).
"""

from __future__ import annotations

import os
import time

import torch

from benchmarks.common import cli, integer, integers, key_values, write_result

DEFAULTS = {"backbone": "smollm2-135m", "batches": "1,8,32", "new_tokens": "64", "threads": "0", "out": ""}


def measure(argv: list[str]) -> None:
    settings = key_values(argv, DEFAULTS)
    batches = integers(settings, "batches", minimum=1)
    new_tokens = integer(settings, "new_tokens", minimum=1)
    threads = integer(settings, "threads", minimum=0)
    if threads:
        torch.set_num_threads(threads)
    from omegaconf import OmegaConf

    from zoo.config import compose
    from zoo.data.loading import load_corpus
    from zoo.llm_text import HFTextGenerator, profile_prompts
    from zoo.modules.llm import LLMConfig

    started = time.time()
    _, prompts = profile_prompts(load_corpus(compose("sasrec_ml100k").data), max_history=10, noun="movies")
    loading = time.time()
    generator = HFTextGenerator(OmegaConf.structured(LLMConfig(backbone=settings["backbone"])), new_tokens)
    load_s = time.time() - loading
    generator.generate(prompts[:1])  # warm-up (first-call allocations)
    rows = []
    for batch in batches:
        before = generator.generated_tokens
        tick = time.time()
        texts = generator.generate(prompts[:batch])
        seconds = time.time() - tick
        tokens = generator.generated_tokens - before
        rows.append(
            {
                "batch_size": batch,
                "generated_tokens": tokens,
                "max_tokens": batch * new_tokens,
                "seconds": round(seconds, 3),
                "tokens_per_s": round(tokens / seconds, 2),
                "example": texts[0][:200],
            }
        )
        print(f"batch {batch:>3}: {tokens} tokens in {seconds:.1f} s = {tokens / seconds:.1f} tokens/s")
    write_result(
        settings["out"] or "llm_text_throughput",
        {
            "kind": "llm_text_throughput",
            "backbone": settings["backbone"],
            "parameters": sum(p.numel() for p in generator.backbone.parameters()),
            "new_tokens": new_tokens,
            "load_s": round(load_s, 2),
            "torch_threads": torch.get_num_threads(),
            "load_avg_1m_start": os.getloadavg()[0],
            "decoding": "greedy, KV cache, left-padded batch, chat template",
            "rows": rows,
        },
        started,
    )


def main(argv: list[str] | None = None) -> int:
    return cli(measure, __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
