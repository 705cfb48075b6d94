"""MovieLens-1M (GroupLens): 6,040 users, 3,706 rated movies, 1,000,209 ratings with timestamps.

Read from ``<data root>/ml-1m/ml-1m.zip`` (downloaded from GroupLens when missing, checked against the MD5 that
GroupLens publishes); the members ``ml-1m/ratings.dat``, ``movies.dat`` and ``users.dat`` are read from the zip
directly. Every rating is an interaction, ordered by timestamp (ties keep file order); ratings are kept for the
CTR view (label = rating > 3, ``zoo.data.ctr``). Users keep their GroupLens ids in numeric order; movies are
numbered 1..N in order of their GroupLens id (only rated movies). Item text: ``title`` (without the year),
``year``, ``genres`` (space-joined, as for ml100k); user features: ``gender``, ``age`` (the GroupLens age band),
``occupation`` (decoded name), ``zip_code``. ``data.k_core`` applies an iterative k-core to the ratings.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np

from zoo.data.cache import source_inputs
from zoo.data.corpus import Corpus
from zoo.data.download import RemoteFile, data_root, require_file
from zoo.data.events import chronological_corpus, handles_k_core, k_core_mask
from zoo.errors import DataError
from zoo.registry import SOURCES

ML1M_REMOTE = RemoteFile(
    "https://files.grouplens.org/datasets/movielens/ml-1m.zip", "md5:c4d9eecfca2ab87c1945afe126590906"
)
AGE_BANDS = {"1": "under 18", "18": "18-24", "25": "25-34", "35": "35-44", "45": "45-49", "50": "50-55", "56": "56+"}
OCCUPATIONS = (
    "other",
    "academic/educator",
    "artist",
    "clerical/admin",
    "college/grad student",
    "customer service",
    "doctor/health care",
    "executive/managerial",
    "farmer",
    "homemaker",
    "K-12 student",
    "lawyer",
    "programmer",
    "retired",
    "sales/marketing",
    "scientist",
    "self-employed",
    "technician/engineer",
    "tradesman/craftsman",
    "unemployed",
    "writer",
)
_TITLE_YEAR = re.compile(r"^(.*) \((\d{4})\)$")


def ml1m_zip(cfg) -> Path:
    return data_root(cfg) / "ml-1m" / "ml-1m.zip"


def _member(archive: zipfile.ZipFile, zip_path: Path, name: str) -> tuple[str, bytes]:
    member = f"ml-1m/{name}"
    try:
        return f"{zip_path}:{member}", archive.read(member)
    except KeyError:
        raise DataError(f"{zip_path}: no member {member} (is this the GroupLens ml-1m.zip?)") from None


def _rows(where: str, data: bytes, fields: tuple[str, ...]) -> list[tuple[int, list[str]]]:
    """(line number, fields) of the non-blank ``::``-separated latin-1 lines, each with exactly
    ``len(fields)`` fields (``file:line`` and the expected layout on error)."""
    rows = []
    for lineno, line in enumerate(data.decode("latin-1").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("::")
        if len(parts) != len(fields):
            raise DataError(f"{where}:{lineno}: expected {'::'.join(fields)}, got {len(parts)} fields")
        rows.append((lineno, parts))
    return rows


def read_ratings(where: str, data: bytes) -> np.ndarray:
    """[R, 4] int64 (user, movie, rating, timestamp) from ``ratings.dat``."""
    fields = ("UserID", "MovieID", "Rating", "Timestamp")
    lines = sum(1 for line in data.splitlines() if line.strip())
    try:
        values = np.array(data.replace(b"::", b" ").split(), dtype=np.int64)
    except ValueError:
        values = None
    if values is None or len(values) != 4 * lines:
        for lineno, parts in _rows(where, data, fields):
            if not all(p.strip().lstrip("-").isdigit() for p in parts):
                raise DataError(f"{where}:{lineno}: expected integers UserID::MovieID::Rating::Timestamp")
        raise DataError(f"{where}: expected lines of UserID::MovieID::Rating::Timestamp")
    return values.reshape(-1, 4)


def _by_id(where: str, rows: list[tuple[int, list[str]]]) -> dict[int, list[str]]:
    """Rows keyed by their integer first field; a non-integer or repeated id is an error."""
    out: dict[int, list[str]] = {}
    for lineno, row in rows:
        try:
            key = int(row[0])
        except ValueError:
            raise DataError(f"{where}:{lineno}: id {row[0]!r} is not an integer") from None
        if key in out:
            raise DataError(f"{where}:{lineno}: duplicate id {key}")
        out[key] = row
    return out


def load_ml1m(path: Path, k_core: int = 0) -> Corpus:
    """Build the ml1m corpus from a GroupLens ``ml-1m.zip``."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise DataError(f"{path}: not a readable zip file ({err})") from None
    with archive:
        where, data = _member(archive, path, "ratings.dat")
        ratings = read_ratings(where, data)
        movies_where, movies_data = _member(archive, path, "movies.dat")
        movies = _by_id(movies_where, _rows(movies_where, movies_data, ("MovieID", "Title", "Genres")))
        users_where, users_data = _member(archive, path, "users.dat")
        users = _by_id(users_where, _rows(users_where, users_data, ("UserID", "Gender", "Age", "Occupation", "Zip")))
    if not len(ratings):
        raise DataError(f"{where}: no ratings")
    unknown_movies = np.setdiff1d(ratings[:, 1], np.fromiter(movies, dtype=np.int64))
    if len(unknown_movies):
        raise DataError(f"{where}: movie id {unknown_movies[0]} is not in movies.dat")
    unknown_users = np.setdiff1d(ratings[:, 0], np.fromiter(users, dtype=np.int64))
    if len(unknown_users):
        raise DataError(f"{where}: user id {unknown_users[0]} is not in users.dat")
    keep = k_core_mask(ratings[:, 0], ratings[:, 1], k_core)
    if not keep.any():
        raise DataError(f"{where}: no ratings survive the {k_core}-core filter")
    ratings = ratings[keep]
    id_names = [str(i) for i in range(int(max(ratings[:, 0].max(), ratings[:, 1].max())) + 1)]
    corpus = chronological_corpus(
        "ml1m",
        ratings[:, 0],
        ratings[:, 1],
        ratings[:, 3],
        user_ids=id_names,
        item_ids=id_names,
        ratings=ratings[:, 2],
        item_numbering="code",
    )
    titles, years, genres = [""], [""], [""]
    for raw in corpus.item_ids[1:]:
        _, title, genre = movies[int(raw)]
        match = _TITLE_YEAR.match(title.strip())
        titles.append(match.group(1) if match else title.strip())
        years.append(match.group(2) if match else "")
        genres.append(" ".join(genre.split("|")))
    corpus.item_text.update(title=titles, year=years, genres=genres)
    rows = [users[int(u)] for u in corpus.user_ids]
    corpus.user_features.update(
        gender=[r[1] for r in rows],
        age=[AGE_BANDS.get(r[2], r[2]) for r in rows],
        occupation=[OCCUPATIONS[int(r[3])] if r[3].isdigit() and int(r[3]) < len(OCCUPATIONS) else r[3] for r in rows],
        zip_code=[r[4] for r in rows],
    )
    return corpus.validate()


@SOURCES.register("ml1m")
@handles_k_core
@source_inputs(lambda cfg: [ml1m_zip(cfg)])
def ml1m_source(cfg) -> Corpus:
    """MovieLens-1M with titles, genres and user demographics (downloaded from GroupLens when missing)."""
    path = require_file(ml1m_zip(cfg), ML1M_REMOTE, cfg.download)
    return load_ml1m(path, cfg.k_core)
