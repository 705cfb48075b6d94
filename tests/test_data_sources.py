"""Sources on tiny fixture files in each raw format (S3-Rec sequences + titles, Yelp folder with datamaps, Amazon
2014 reviews + metadata, GroupLens ml-1m, RecBole atomic) and their error paths: one DataError line naming the
file (and line) and what was expected."""

from __future__ import annotations

import gzip
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from zoo.config import DataConfig
from zoo.data.events import chronological_corpus, k_core_mask
from zoo.data.loading import load_corpus
from zoo.data.sources.amazon import load_raw_amazon, read_meta, read_reviews
from zoo.data.sources.atomic import load_atomic
from zoo.data.sources.ml1m import load_ml1m
from zoo.data.sources.seqfile import load_sequence_corpus, read_sequence_file
from zoo.errors import ConfigError, DataError

FIXTURES = Path(__file__).parent / "fixtures" / "data"


def sequences(corpus) -> list[list[int]]:
    return [corpus.sequence(u).tolist() for u in range(corpus.num_users)]


def config(**kw) -> DataConfig:
    return DataConfig(cache=False, download=False, **kw)


# -- S3-Rec sequence files -------------------------------------------------------------------------------------------
def test_seqfile_keeps_file_ids_and_line_order_with_clean_titles():
    path, titles = FIXTURES / "s3rec" / "Tiny.txt", FIXTURES / "s3rec" / "Tiny_item2title.json"
    corpus = load_corpus(config(name="seqfile", path=str(path), titles=str(titles)))
    assert sequences(corpus) == [[1, 2, 3], [2, 4, 1, 5], [3, 1, 5, 2]]
    assert corpus.user_ids == ["1", "2", "3"] and corpus.num_items == 5
    assert corpus.item_text["title"] == ["", "Tom & Jerry", "", "Plain", "Spaced", 'Café "Five"']


@pytest.mark.parametrize(
    "content, expected",
    [
        ("1 1 2\n2 3 x 4\n", r"Tiny.txt:2: 'x' is not an integer id; expected 'user_id item_id"),
        ("1 1 2\n\n7\n", r"Tiny.txt:3: user '7' has an empty sequence"),
        ("1 1 2\n2 0 3\n", r"Tiny.txt:2: item id 0 out of range"),
        ("1 1 2\n2 3\n1 4 5\n", r"Tiny.txt:3: duplicate user id '1' \(first on line 1\)"),
        ("\n\n", r"Tiny.txt: no sequences"),
    ],
)
def test_malformed_sequence_files_name_file_and_line(tmp_path, content, expected):
    path = tmp_path / "Tiny.txt"
    path.write_text(content)
    with pytest.raises(DataError, match=expected):
        read_sequence_file(path)


def test_titles_out_of_range_or_not_json(tmp_path):
    seq = FIXTURES / "s3rec" / "Tiny.txt"
    bad_range = tmp_path / "t.json"
    bad_range.write_text('{"6": "six"}')
    with pytest.raises(DataError, match=r"t.json: item id 6 out of range 1..5"):
        load_sequence_corpus("tiny", seq, bad_range)
    bad_json = tmp_path / "b.json"
    bad_json.write_text("{not json")
    with pytest.raises(DataError, match=r"b.json: not valid JSON"):
        load_sequence_corpus("tiny", seq, bad_json)


def test_seqfile_needs_a_path_and_refuses_k_core():
    with pytest.raises(DataError, match="data.path"):
        load_corpus(config(name="seqfile"))
    with pytest.raises(ConfigError, match="k-core applies to raw sources"):
        load_corpus(config(name="seqfile", path=str(FIXTURES / "s3rec" / "Tiny.txt"), k_core=5))


# -- Yelp folder (S3-Rec file + datamaps + titles + attributes) ----------------------------------------------------
def test_yelp_reads_raw_ids_titles_and_decoded_attributes(tmp_path):
    shutil.copytree(FIXTURES / "yelp", tmp_path / "Yelp")
    corpus = load_corpus(config(name="yelp", root=str(tmp_path)))
    assert sequences(corpus)[1] == [2, 4, 1, 5]
    assert corpus.item_ids == ["", "bizA", "bizB", "bizC", "bizD", "bizE"]
    assert corpus.user_ids == ["uX", "uY", "uZ"]
    assert corpus.title(2) == "Sal's Pizza"
    assert corpus.item_text["attributes"][1] == "Restaurants, Ice Cream & Frozen Yogurt"
    assert corpus.item_text["attributes"][5] == "Greek, Restaurants"
    assert corpus.item_text["attribute_ids"][1] == "1 2" and corpus.item_text["attributes"][2] == ""


def test_yelp_datamaps_must_match_the_sequence_file(tmp_path):
    shutil.copytree(FIXTURES / "yelp", tmp_path / "Yelp")
    (tmp_path / "Yelp" / "Yelp.txt").write_text("1 1 2 3\n2 2 4 1 5 6\n3 3 1\n")
    with pytest.raises(DataError, match=r"datamaps.json: 5 items in id2item, the sequence file has 6"):
        load_corpus(config(name="yelp", root=str(tmp_path)))


def test_missing_leaderboard_file_offline_names_url_and_path(tmp_path):
    with pytest.raises(DataError) as err:
        load_corpus(config(name="sports", root=str(tmp_path)))
    message = str(err.value)
    assert "CIKM2020-S3Rec" in message and "Sports_and_Outdoors.txt" in message
    assert str(tmp_path / "Sports_and_Outdoors" / "Sports_and_Outdoors.txt") in message


# -- Amazon 2014 raw processing ----------------------------------------------------------------------------------
@pytest.fixture
def amazon_root(tmp_path) -> Path:
    raw = tmp_path / "Beauty" / "raw"
    raw.mkdir(parents=True)
    for name in ("reviews_Beauty_5.json", "meta_Beauty.json"):
        (raw / f"{name}.gz").write_bytes(gzip.compress((FIXTURES / "amazon2014" / name).read_bytes()))
    return tmp_path


def test_amazon_raw_route_follows_s3rec_processing(amazon_root):
    corpus = load_corpus(config(name="beauty", root=str(amazon_root), k_core=2))
    # uC (one review) and items i3, i4 (one review each) go in round 1, then uD (left with one) in round 2;
    # users keep first-appearance order, items are numbered by first appearance in the sorted sequences, and
    # equal times keep file order (uA: i1 before i5 at t=100).
    assert corpus.user_ids == ["uA", "uB", "uE"]
    assert corpus.item_ids == ["", "i2", "i1", "i5"]
    assert sequences(corpus) == [[1, 2, 3], [2, 1, 3], [1, 3]]
    assert corpus.timestamps.tolist() == [90, 100, 100, 40, 50, 60, 5, 5]
    text = corpus.item_text
    assert text["title"] == ["", "", "Nail Polish & Remover", "Men's Razor"]
    assert text["brand"] == ["", "", "OPI", "Gillette"]
    assert text["categories"] == ["", "Skin Care, Makeup", "Makeup, Nails", ""]
    assert text["price"] == ["", "", "7.5", ""]
    assert text["attributes"] == ["", "4 2", "1 2 3", "5"]  # numbered over items in metadata order


def test_k_core_off_keeps_every_review(amazon_root):
    reviews = amazon_root / "Beauty" / "raw" / "reviews_Beauty_5.json.gz"
    corpus = load_raw_amazon("beauty", reviews, None, k_core=0)
    assert (corpus.num_users, corpus.num_items, corpus.num_interactions) == (5, 5, 11)


def test_k_core_mask_is_iterative():
    # a chain: each removal leaves another user or item below k=2 until nothing survives
    users, items = np.array([0, 0, 1, 1, 2]), np.array([0, 1, 0, 2, 2])
    assert not k_core_mask(users, items, 2).any()
    assert k_core_mask(users, items, 1).all()
    # a 2-core (users 0-2 x items 0-1) plus a dangling user/item pair, which alone goes
    users, items = np.array([0, 0, 1, 1, 2, 2, 3]), np.array([0, 1, 0, 1, 0, 1, 2])
    assert k_core_mask(users, items, 2).tolist() == [True] * 6 + [False]
    assert not k_core_mask(users, items, 3).any()


def test_malformed_review_and_meta_lines(tmp_path):
    reviews = tmp_path / "reviews.json"
    reviews.write_text('{"reviewerID": "u", "asin": "a", "unixReviewTime": 1}\n{"reviewerID": "u"}\n')
    with pytest.raises(DataError, match=r"reviews.json:2: expected a JSON object with reviewerID, asin"):
        read_reviews(reviews)
    meta = tmp_path / "meta.json"
    meta.write_text("{'asin': 'a', 'title': 'ok'}\n{'asin': 'b', 'title': __import__('os')}\n")
    with pytest.raises(DataError, match=r"meta.json:2: expected a Python-literal dict"):
        read_meta(meta, {"a", "b"})
    assert read_meta(meta, {"a"}) == {"a": {"asin": "a", "title": "ok"}}  # unwanted lines are not evaluated


def test_chronological_corpus_code_numbering():
    corpus = chronological_corpus(
        "t",
        np.array([1, 0, 1]),
        np.array([5, 3, 3]),
        np.array([2.0, 1.0, 1.0]),
        ["a", "b"],
        [str(i) for i in range(6)],
        item_numbering="code",
    )
    assert corpus.item_ids == ["", "3", "5"] and sequences(corpus) == [[1], [1, 2]]


# -- MovieLens-1M ----------------------------------------------------------------------------------------------
def ml1m_zip(tmp_path: Path, overrides: dict[str, bytes] | None = None) -> Path:
    path = tmp_path / "ml-1m" / "ml-1m.zip"
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for name in ("ratings.dat", "movies.dat", "users.dat"):
            data = (overrides or {}).get(name, (FIXTURES / "ml-1m" / name).read_bytes())
            archive.writestr(f"ml-1m/{name}", data)
    return path


def test_ml1m_from_the_grouplens_zip(tmp_path):
    ml1m_zip(tmp_path)
    corpus = load_corpus(config(name="ml1m", root=str(tmp_path)))
    assert corpus.item_ids == ["", "10", "20", "30", "40"]  # rated movies in GroupLens id order
    assert corpus.user_ids == ["1", "2", "3"]
    assert sequences(corpus) == [[3, 1, 2], [2, 1, 4], [3]]
    assert corpus.ratings.tolist() == [4, 5, 3, 2, 4, 5, 1]
    assert corpus.item_text["title"][1:] == ["Toy Story", "Jumanji", "Amélie", "Heat"]
    assert corpus.item_text["year"][3] == "2001"
    assert corpus.item_text["genres"][1] == "Animation Children's Comedy"
    assert corpus.user_features["gender"] == ["F", "M", "M"]
    assert corpus.user_features["age"] == ["under 18", "56+", "25-34"]
    assert corpus.user_features["occupation"] == ["K-12 student", "self-employed", "scientist"]
    assert corpus.user_features["zip_code"][0] == "48067"


def test_ml1m_k_core(tmp_path):
    ml1m_zip(tmp_path)
    corpus = load_corpus(config(name="ml1m", root=str(tmp_path), k_core=2))
    # user 3 (one rating) and movie 40 (one rating) go; then movie 30 has one rating left and goes, leaving
    # user 1 with two and user 2 with two ratings of movies 10 and 20
    assert corpus.user_ids == ["1", "2"] and corpus.item_ids == ["", "10", "20"]
    assert sequences(corpus) == [[1, 2], [2, 1]]


@pytest.mark.parametrize(
    "name, data, expected",
    [
        ("ratings.dat", b"1::10::5::978300760\n1::20::3\n", r"ratings.dat:2: expected UserID::MovieID::Rating::Times"),
        ("ratings.dat", b"1::10::5::978300760\n1::x::3::1\n", r"ratings.dat:2: expected integers"),
        ("ratings.dat", b"1::99::5::978300760\n", r"movie id 99 is not in movies.dat"),
        ("movies.dat", b"10::A (1990)::Drama\n10::B (1991)::Drama\n", r"movies.dat:2: duplicate id 10"),
    ],
)
def test_ml1m_malformed_files(tmp_path, name, data, expected):
    path = ml1m_zip(tmp_path, {name: data})
    with pytest.raises(DataError, match=expected):
        load_ml1m(path)


def test_ml1m_not_a_zip(tmp_path):
    path = tmp_path / "ml-1m.zip"
    path.write_text("not a zip")
    with pytest.raises(DataError, match="not a readable zip"):
        load_ml1m(path)


# -- RecBole atomic files --------------------------------------------------------------------------------------
def test_atomic_fixture(tmp_path):
    corpus = load_corpus(config(name="atomic", path=str(FIXTURES / "atomic" / "tiny")))
    assert corpus.user_ids == ["u1", "u2"] and corpus.item_ids == ["", "a", "b", "c"]
    assert sequences(corpus) == [[2, 3, 1], [2, 3]]
    assert corpus.ratings.tolist() == [3, 2, 5, 4, 1]
    assert corpus.item_text["title"] == ["", "Alpha", "Beta", "Gamma"]
    assert corpus.item_text["genre"][1] == "x y"
    assert corpus.user_features["age"] == ["20", "30"]


def test_atomic_k_core(tmp_path):
    corpus = load_corpus(config(name="atomic", path=str(FIXTURES / "atomic" / "tiny"), k_core=2))
    assert corpus.item_ids == ["", "b", "c"] and sequences(corpus) == [[1, 2], [1, 2]]


def atomic_dir(tmp_path: Path, **files: str) -> Path:
    folder = tmp_path / "tiny"
    shutil.copytree(FIXTURES / "atomic" / "tiny", folder)
    for ext, text in files.items():
        (folder / f"tiny.{ext}").write_text(text)
    return folder


@pytest.mark.parametrize(
    "files, expected",
    [
        ({"inter": "user_id:token\titem_id:token\nu1\ta\nu1\n"}, r"tiny.inter:3: expected 2 tab-separated fields"),
        ({"inter": "user_id:token\titem_id\n"}, r"tiny.inter:1: column 'item_id' must be name:type"),
        ({"inter": "user_id:token\titem_id:token\tr:float\nu\ta\tfive\n"}, r"tiny.inter:2: field 'r' expects a float"),
        (
            {"inter": "user_id:token\titem_id:token\ttimestamp:float\nu\ta\t1\nu\tb\t\n"},
            r"tiny.inter:3: empty timestamp",
        ),
        ({"inter": "user_id:token\tuser_id:token\n"}, r"tiny.inter:1: column 'user_id' appears twice"),
        ({"inter": "user_id:token\tthing:token\nu\ta\n"}, r"tiny.inter:1: needs a 'item_id' column"),
        ({"inter": "user_id:token\titem_id:token\n"}, r"tiny.inter: no interactions"),
        (
            {"item": "item_id:token\tt:token\na\tx\nb\ty\na\tz\n"},
            r"tiny.item:4: duplicate item_id 'a' \(first on line 2\)",
        ),
        ({"user": "user_id:token\tage:token\nu1\t1\nu1\t2\n"}, r"tiny.user:3: duplicate user_id 'u1'"),
        ({"user": "age:token\n1\n"}, r"tiny.user:1: needs a 'user_id' column"),
    ],
)
def test_atomic_errors_name_file_and_line(tmp_path, files, expected):
    folder = atomic_dir(tmp_path, **files)
    with pytest.raises(DataError, match=expected):
        load_atomic("tiny", folder)


def test_unknown_source_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown dataset 'beuaty'; nearest: beauty"):
        load_corpus(config(name="beuaty"))
