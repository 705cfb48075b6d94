"""RecBole atomic files (``.inter``, ``.item``, ``.user`` with typed headers such as ``item_id:token``)."""

from __future__ import annotations

from pathlib import Path

from zoo.data.corpus import Corpus
from zoo.errors import DataError
from zoo.registry import SOURCES

ATOMIC_TYPES = ("token", "token_seq", "float", "float_seq")


def read_atomic(path: Path) -> dict[str, list]:
    """Read one atomic file into column name -> values (floats for ``float`` fields, strings otherwise)."""
    if not path.is_file():
        raise DataError(f"missing atomic file: {path}")
    with path.open(encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        names, kinds = [], []
        for col in header:
            name, _, kind = col.partition(":")
            if kind not in ATOMIC_TYPES:
                raise DataError(f"{path}:1: column '{col}' needs a type suffix, one of {', '.join(ATOMIC_TYPES)}")
            names.append(name)
            kinds.append(kind)
        columns: dict[str, list] = {n: [] for n in names}
        for lineno, line in enumerate(f, start=2):
            line = line.rstrip("\n")
            if not line:
                continue
            values = line.split("\t")
            if len(values) != len(names):
                raise DataError(f"{path}:{lineno}: expected {len(names)} tab-separated fields, got {len(values)}")
            for name, kind, value in zip(names, kinds, values):
                if kind == "float":
                    try:
                        columns[name].append(float(value) if value else float("nan"))
                    except ValueError:
                        raise DataError(f"{path}:{lineno}: field '{name}' expects a float, got {value!r}") from None
                else:
                    columns[name].append(value)
    return columns


def load_atomic(name: str, directory: Path, prefix: str | None = None, title_field: str | None = None) -> Corpus:
    """Load ``<prefix>.inter`` (+ optional ``.item``/``.user``) from ``directory`` into a Corpus."""
    directory = Path(directory)
    prefix = prefix or directory.name
    inter = read_atomic(directory / f"{prefix}.inter")
    for required in ("user_id", "item_id"):
        if required not in inter:
            raise DataError(f"{directory / f'{prefix}.inter'}: needs a '{required}' column")
    corpus = Corpus.from_interactions(
        name, inter["user_id"], inter["item_id"], inter.get("timestamp"), inter.get("rating")
    )
    item_file = directory / f"{prefix}.item"
    if item_file.is_file():
        table = read_atomic(item_file)
        if "item_id" not in table:
            raise DataError(f"{item_file}: needs an 'item_id' column")
        for field_name, values in table.items():
            if field_name == "item_id":
                continue
            text_name = "title" if field_name in (title_field, "movie_title", "title") else field_name
            corpus.with_item_text(text_name, {k: str(v) for k, v in zip(table["item_id"], values)})
    user_file = directory / f"{prefix}.user"
    if user_file.is_file():
        table = read_atomic(user_file)
        by_user = {field_name: dict(zip(table["user_id"], values)) for field_name, values in table.items()}
        for field_name, mapping in by_user.items():
            if field_name != "user_id":
                corpus.user_features[field_name] = [str(mapping.get(u, "")) for u in corpus.user_ids]
    return corpus.validate()


@SOURCES.register("atomic")
def atomic_source(cfg) -> Corpus:
    """Any RecBole atomic dataset: ``data.path`` is the folder holding ``<name>.inter`` etc."""
    if not cfg.path:
        raise DataError("data.name=atomic needs data.path=<folder with <name>.inter [.item .user]>")
    return load_atomic(Path(cfg.path).name, Path(cfg.path))
