"""``zoo.export(run_dir, out_dir)`` / ``python -m zoo.export RUN_DIR OUT_DIR [--push-to-hub USER/REPO]``: a run as a
Hugging Face-style folder that ``zoo.load`` reads back with identical test metrics.

The folder holds

* ``model.safetensors``: the weights of the run's best checkpoint (``last.ckpt`` without one; for a model that
  trains nothing, its state after ``prepare``), without the frozen pretrained backbone of a LoRA run, which is
  reloaded from ``model.backbone`` and checked against ``frozen_weights.json`` (as checkpoints do);
* ``zoo_config.yaml``: the run's resolved config; ``metrics.json``: its metrics;
* ``inference/``: the run's inference files (``zoo.inference``): the item id map and titles (``items.json``), user
  ids, item counts, the stage artifacts (Semantic IDs, a retriever run);
* ``README.md``: a model card with the metrics, data, protocol and provenance (zoo git commit, date, dataset
  fingerprint);
* ``adapter/`` for LoRA runs (``model.lora_r > 0``): the peft adapter, loadable with
  ``PeftModel.from_pretrained(base, "<out>/adapter")``.

``push_to_hub="user/repo"`` uploads the folder with ``huggingface_hub``; any failure (offline, no token) is one
line naming what failed (a ``ZooError``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from zoo.errors import DataError, ZooError
from zoo.inference import BUNDLE, EXPORT_CONFIG, EXPORT_FROZEN, EXPORT_WEIGHTS


class HubError(ZooError):
    """Uploading to the Hugging Face Hub failed (offline, no token, no rights)."""


def export(run_dir, out_dir, push_to_hub: str | None = None, token: str | None = None) -> Path:
    """Write the folder (see the module docstring) to ``out_dir`` (which must not exist or be empty), atomically;
    with ``push_to_hub``, upload it to that Hub repository. Returns the folder."""
    from omegaconf import OmegaConf
    from safetensors.torch import save_file

    from zoo.inference import load
    from zoo.io import write_json_atomic, write_text_atomic
    from zoo.models.base import FROZEN_KEY

    rec = load(run_dir)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"zoo.export: {out} exists and is not an empty folder")
    source = Path(rec.info["run_dir"])
    if rec.info["source"] == "export":
        raise DataError(f"zoo.export: {source} is already an exported folder")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        state, frozen = _weights(rec, FROZEN_KEY)
        save_file({k: v.detach().cpu().contiguous().clone() for k, v in state.items()}, str(tmp / EXPORT_WEIGHTS))
        if frozen:
            write_json_atomic(tmp / EXPORT_FROZEN, frozen)
        write_text_atomic(tmp / EXPORT_CONFIG, OmegaConf.to_yaml(rec.cfg, resolve=True))
        write_json_atomic(tmp / "metrics.json", rec.info["metrics"])
        shutil.copytree(source / BUNDLE, tmp / BUNDLE, copy_function=_link_or_copy)
        adapter = _save_adapter(rec, tmp / "adapter")
        write_text_atomic(tmp / "README.md", model_card(rec, adapter))
        if out.exists():
            out.rmdir()
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if push_to_hub:
        push(out, push_to_hub, token)
    return out


def _weights(rec, frozen_key: str) -> tuple[dict, dict | None]:
    """The state dict as the checkpoint holds it (frozen backbone weights left out) and the frozen-weights record."""
    weights = rec.info.get("weights")
    if weights:
        from zoo.run import read_checkpoint

        ckpt = read_checkpoint(weights)
        return ckpt["state_dict"], ckpt.get(frozen_key)
    return rec.model.state_dict(), None


def _save_adapter(rec, folder: Path) -> bool:
    """The peft adapter of a LoRA run (``model.lora_r > 0``) via ``save_pretrained``; False for other runs."""
    backbone = getattr(rec.model, "backbone", None)
    inner = getattr(backbone, "model", None)
    if not int(rec.cfg.model.get("lora_r", 0) or 0) or not hasattr(inner, "peft_config"):
        return False
    inner.save_pretrained(str(folder))
    return True


def _link_or_copy(src, dst) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def git_commit() -> str:
    """The zoo's git commit (with ``-dirty`` when the tree has changes), or "unknown" outside a checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def model_card(rec, adapter: bool) -> str:
    """README.md of the folder: what it is, how to load it, the run's metrics, data, protocol, provenance."""
    from zoo.evaluation import Protocol

    cfg, info = rec.cfg, rec.info
    bundle = Path(info["run_dir"]) / BUNDLE
    meta = json.loads((bundle / "meta.json").read_text()) if (bundle / "meta.json").is_file() else {}
    tested = {k: v for k, v in sorted(info["metrics"].items()) if k.startswith("test/")}
    rows = "\n".join(f"| `{k}` | {v:.4f} |" for k, v in tested.items()) or "| (no test metrics) | |"
    protocol = getattr(rec.datamodule, "protocol", None) or Protocol.from_config(cfg)
    split = "leave-one-out per user (last item = test, second to last = validation)"
    lines = [
        "---",
        "library_name: zoo",
        "tags: [recommendation, zoo, " + str(cfg.model.name) + "]",
        "---",
        f"# {cfg.recipe}: {cfg.model.name} on {cfg.data.name}",
        "",
        f"A `{cfg.model.name}` model trained by the zoo (recipe `{cfg.recipe}`), exported from `{info['run_dir']}`.",
        "",
        "```python",
        "import zoo",
        'model = zoo.load("<this folder>")',
        'print(model.recommend(["<raw item id>", "<raw item id>"], k=10))',
        "```",
        "",
        "## Test metrics",
        "",
        "| metric | value |",
        "|---|---|",
        rows,
        "",
        "## Data",
        "",
        f"- dataset `{cfg.data.name}` (corpus `{meta.get('corpus', '?')}`): {meta.get('num_users', '?')} users, "
        f"{meta.get('num_items', '?')} items, {meta.get('num_interactions', '?')} interactions",
        f"- history length `data.max_len={cfg.data.max_len}`; item ids are the dataset's own (`inference/items.json`)",
        "",
        "## Protocol",
        "",
        f"- split: {split}"
        if rec.model.task != "ctr"
        else f"- split: {split}; label = rating > {cfg.data.ctr_threshold}",
        f"- candidates: {protocol.describe()}" if rec.model.task != "ctr" else "- metrics: AUC, LogLoss",
        f"- cut-offs: {list(cfg.eval.ks)}; ties never favour the target",
        "",
        "## Provenance",
        "",
        f"- zoo git commit: `{git_commit()}`",
        f"- run created: {meta.get('created', '?')}; exported: {time.strftime('%Y-%m-%dT%H:%M:%S%z')}",
        f"- dataset fingerprint: `{meta.get('fingerprint', '?')}` (zoo.stages.corpus_fingerprint)",
        f"- seed: {cfg.seed}; weights: `{Path(info['weights']).name if info.get('weights') else 'none (not trained)'}`",
        "",
        "## Files",
        "",
        f"`{EXPORT_WEIGHTS}` (weights), `{EXPORT_CONFIG}` (resolved config), `metrics.json`, `inference/` (item id "
        "map, titles, user ids, item counts, stage artifacts)"
        + (", `adapter/` (peft LoRA adapter: `PeftModel.from_pretrained(base, 'adapter')`)" if adapter else "")
        + ".",
        "",
    ]
    return "\n".join(lines)


def push(folder: Path, repo_id: str, token: str | None = None) -> None:
    """Upload ``folder`` to the Hub repository ``repo_id`` (created if missing); HubError in one line on failure."""
    try:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id)
    except Exception as err:  # offline, no token, no rights, a bad name: one line
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise HubError(f"push_to_hub={repo_id} failed: {type(err).__name__}: {reason[:200]}") from None


USAGE = "usage: python -m zoo.export RUN_DIR OUT_DIR [--push-to-hub USER/REPO]"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip() + "\n\n" + USAGE)
        return 0
    repo = None
    if "--push-to-hub" in argv:
        at = argv.index("--push-to-hub")
        if at + 1 >= len(argv):
            print(f"error: --push-to-hub needs USER/REPO ({USAGE})", file=sys.stderr)
            return 2
        repo = argv[at + 1]
        del argv[at : at + 2]
    if len(argv) != 2 or any(a.startswith("-") for a in argv):
        print(f"error: expected RUN_DIR OUT_DIR ({USAGE})", file=sys.stderr)
        return 2
    try:
        out = export(argv[0], argv[1], push_to_hub=repo)
    except ZooError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    print(f"exported {argv[0]} to {out}" + (f" and pushed it to {repo}" if repo else ""))
    return 0


class _CallableModule(type(sys.modules[__name__])):
    """``zoo.export(run_dir, out_dir)`` works even where ``zoo.export`` is this module."""

    def __call__(self, *args, **kwargs):
        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    sys.exit(main())
