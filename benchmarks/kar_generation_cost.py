"""What generating KAR's knowledge for a whole dataset costs: the real prompts of ``kar_<backbone>_<dataset>``
(user reasoning from the first n_u ratings, item facts), a sample of them generated with the recipe's LLM and
decoding settings (repetition penalty, no-repeat n-grams), batched, timed; the rate extrapolated to every user and
item. Nothing is cached: the sample is generated fresh each time.

    python -m benchmarks.kar_generation_cost [recipe=kar_din_ml100k] [users=32] [items=32] [batch_size=16]
        [threads=1] [max_new_tokens=128] [out=benchmarks/results/kar_generation_cost.json]
"""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str]) -> int:
    import torch

    from zoo.config import compose
    from zoo.data.loading import load_corpus
    from zoo.io import write_json_atomic
    from zoo.models.kar.knowledge import build_generator, generation_settings, item_prompts, load_domain, user_prompts

    options = dict(a.split("=", 1) for a in argv)
    recipe = options.get("recipe", "kar_din_ml100k")
    n_users, n_items = int(options.get("users", 32)), int(options.get("items", 32))
    batch_size, threads = int(options.get("batch_size", 16)), int(options.get("threads", 1))
    overrides = [f"model.kar_max_new_tokens={options['max_new_tokens']}"] if "max_new_tokens" in options else []
    torch.set_num_threads(threads)
    cfg = compose(recipe, overrides)
    corpus = load_corpus(cfg.data)
    spec = load_domain(cfg.model.kar_domain)
    _, users, _ = user_prompts(corpus, spec, int(cfg.data.ctr_prefix))
    _, items = item_prompts(corpus, spec)
    generator = build_generator(cfg.model)
    tok = generator.backbone.tokenizer
    rows = {}
    for kind, prompts in (("user", users[:n_users]), ("item", items[:n_items])):
        prompt_tokens = [len(tok(generator._text(p), add_special_tokens=False)["input_ids"]) for p in prompts]
        before, started = generator.generated_tokens, time.monotonic()
        texts = []
        for s in range(0, len(prompts), batch_size):
            texts += generator.generate(prompts[s : s + batch_size])
        took = time.monotonic() - started
        new = generator.generated_tokens - before
        rows[kind] = {
            "prompts": len(prompts),
            "mean_prompt_tokens": round(sum(prompt_tokens) / len(prompts), 1),
            "new_tokens": new,
            "seconds": round(took, 2),
            "prompts_per_s": round(len(prompts) / took, 3),
            "new_tokens_per_s": round(new / took, 1),
            "example_prompt": prompts[0],
            "example_text": texts[0],
        }
    total_users, total_items = corpus.num_users, corpus.num_items
    estimate = total_users / rows["user"]["prompts_per_s"] + total_items / rows["item"]["prompts_per_s"]
    result = {
        "recipe": recipe,
        "dataset": cfg.data.name,
        "generation": generation_settings(cfg.model),
        "batch_size": batch_size,
        "torch_threads": threads,
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, shared 2-core CPU",
        "sample": rows,
        "full_dataset": {
            "users": total_users,
            "items": total_items,
            "estimated_seconds": round(estimate, 1),
            "estimated_minutes": round(estimate / 60, 1),
        },
        "measured": time.strftime("%Y-%m-%d"),
    }
    out = Path(options.get("out", RESULTS / "kar_generation_cost.json"))
    write_json_atomic(out, result)
    print(
        f"{recipe}: users {rows['user']['prompts_per_s']}/s, items {rows['item']['prompts_per_s']}/s "
        f"-> {total_users} users + {total_items} items in ~{estimate / 60:.1f} min ({out})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
