"""Merge the results of benchmark calls run side by side under other names (``name=tmp_*``: one JSON each, so that
concurrent calls never rewrite one file) into one result file:

    python -m benchmarks.merge into=uem_prior from=tmp_beauty,tmp_yelp [section=runs]

``section`` is the keyed part of the results (``runs`` for ``uem_prior`` and ``beam_renormalize``, ``datasets`` for
``uem_alignment``). It is merged key by key, nested dictionaries recursively, so ``datasets.<dataset>.<arm>``
records of different calls end side by side; a record the source also holds replaces the target's. Every other
field of the target (settings, what) is kept. Each source is recorded under ``merged_from`` with its own
``created``, ``git_commit`` and ``wall_time_s``; the sources are left in place (move them out of
``benchmarks/results`` before rendering). The target is written atomically.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from benchmarks import common
from benchmarks.common import cli, key_values, names
from zoo.errors import ConfigError, DataError
from zoo.io import write_json_atomic


def deep_merge(into: dict, other: dict) -> dict:
    """``into`` with ``other``'s keys merged in: nested dictionaries recursively, any other value replaced."""
    for key, value in other.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            deep_merge(into[key], value)
        else:
            into[key] = value
    return into


def read(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"{path}: no such result file")
    try:
        payload = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(payload, dict):
        raise DataError(f"{path}: expected a JSON object")
    return payload


def _main(argv: list[str]) -> None:
    args = key_values(argv, {"into": "", "from": "", "section": "runs"})
    sources, section = names(args, "from"), args["section"]
    if not args["into"] or not sources:
        raise ConfigError("into=NAME and from=NAME[,NAME...] are required (result names, without .json)")
    if args["into"] in sources:
        raise ConfigError(f"into={args['into']} is also a source")
    target_path = common.RESULTS_DIR / f"{args['into']}.json"
    target = read(target_path) if target_path.is_file() else {}
    merged_from = target.setdefault("merged_from", {})
    for name in sources:
        source = read(common.RESULTS_DIR / f"{name}.json")
        if not isinstance(source.get(section), dict):
            raise DataError(f"{name}.json has no '{section}' section to merge")
        deep_merge(target.setdefault(section, {}), source[section])
        merged_from[name] = {k: source.get(k) for k in ("created", "git_commit", "wall_time_s")}
        print(f"{name}: {len(source[section])} '{section}' entries merged into {target_path.name}", flush=True)
    write_json_atomic(target_path, target)


def main(argv: list[str] | None = None) -> int:
    return cli(_main, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
