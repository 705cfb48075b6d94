"""``benchmarks.merge``: side-by-side results (``name=tmp_*``) merged into one file, nested records side by side,
each source recorded; bad arguments and malformed files are one line."""

from __future__ import annotations

import json

import pytest

from benchmarks import common, merge


def write(folder, name, payload):
    (folder / f"{name}.json").write_text(json.dumps(payload))


def test_sections_merge_record_by_record_and_sources_are_recorded(monkeypatch, tmp_path):
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)
    write(tmp_path, "main", {"what": "w", "datasets": {"toys": {"a": 1}, "yelp": {"a": 2}}})
    write(tmp_path, "tmp_1", {"created": "c1", "git_commit": "g1", "datasets": {"yelp": {"b": 3}}})
    write(tmp_path, "tmp_2", {"created": "c2", "datasets": {"yelp": {"a": 4}, "beauty": {"b": 5}}})
    assert merge.main(["into=main", "from=tmp_1,tmp_2", "section=datasets"]) == 0
    out = json.loads((tmp_path / "main.json").read_text())
    assert out["datasets"] == {"toys": {"a": 1}, "yelp": {"a": 4, "b": 3}, "beauty": {"b": 5}}
    assert out["what"] == "w"
    assert out["merged_from"]["tmp_1"] == {"created": "c1", "git_commit": "g1", "wall_time_s": None}
    assert set(out["merged_from"]) == {"tmp_1", "tmp_2"}
    assert (tmp_path / "tmp_1.json").is_file()  # sources stay
    # a new target is created from the sources alone
    assert merge.main(["into=fresh", "from=tmp_1", "section=datasets"]) == 0
    assert json.loads((tmp_path / "fresh.json").read_text())["datasets"] == {"yelp": {"b": 3}}


@pytest.mark.parametrize(
    "argv, code, message",
    [
        (["from=tmp_1"], 2, "into=NAME"),
        (["into=main", "from=main"], 2, "also a source"),
        (["into=main", "from=missing"], 1, "no such result file"),
        (["into=main", "from=broken"], 1, "not valid JSON"),
        (["into=main", "from=tmp_1", "section=runs"], 1, "no 'runs' section"),
    ],
)
def test_bad_merges_are_one_line(monkeypatch, tmp_path, capsys, argv, code, message):
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)
    write(tmp_path, "tmp_1", {"datasets": {}})
    (tmp_path / "broken.json").write_text("{not json")
    assert merge.main(argv) == code
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (tmp_path / "main.json").exists()


def test_a_benchmark_rewriting_a_merged_file_keeps_its_sources(tmp_path):
    write(tmp_path, "main", {"runs": {"a": 1}, "merged_from": {"tmp_1": {"created": "c1"}}})
    common.write_result("main", {"runs": {"a": 2}}, None, tmp_path)
    out = json.loads((tmp_path / "main.json").read_text())
    assert out["runs"] == {"a": 2} and out["merged_from"] == {"tmp_1": {"created": "c1"}}
    common.write_result("plain", {"runs": {}}, None, tmp_path)
    assert "merged_from" not in json.loads((tmp_path / "plain.json").read_text())
