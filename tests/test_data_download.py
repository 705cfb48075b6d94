"""Downloads against a local HTTP server on 127.0.0.1: complete transfer, resume after an interruption (HTTP
Range), checksum mismatch, offline / disabled errors that name the URL and the path, and the download routes of
the ml1m and Amazon sources."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import logging
import socket
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from zoo.config import DataConfig
from zoo.data.download import RemoteFile, data_root, fetch, require_file, user_cache_dir
from zoo.data.loading import load_corpus
from zoo.data.sources import amazon, ml1m
from zoo.errors import DataError

FIXTURES = Path(__file__).parent / "fixtures" / "data"


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.files``; honours ``Range: bytes=N-``; paths in ``server.cut_once`` send half the body
    once and drop the connection (an interrupted transfer)."""

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        server = self.server
        range_header = self.headers.get("Range")
        server.requests.append((self.path, range_header))
        data = server.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = int(range_header.split("=")[1].split("-")[0]) if range_header else 0
        body = data[start:]
        self.send_response(206 if range_header else 200)
        if range_header:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path in server.cut_once:
            server.cut_once.discard(self.path)
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files, httpd.cut_once, httpd.requests = {}, set(), []
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


PAYLOAD = bytes(range(256)) * 4096  # 1 MiB, so the interrupted transfer stops mid-file


def test_fetch_downloads_verifies_and_renames(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    dest = tmp_path / "sub" / "f.bin"
    assert fetch(RemoteFile(server.url + "/f.bin", sha256(PAYLOAD)), dest, progress=False) == dest
    assert dest.read_bytes() == PAYLOAD
    assert sorted(p.name for p in dest.parent.iterdir()) == ["f.bin"]  # no .part or .lock left


def test_fetch_resumes_an_interrupted_transfer_with_a_range_request(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    server.cut_once.add("/f.bin")
    dest = tmp_path / "f.bin"
    remote = RemoteFile(server.url + "/f.bin", sha256(PAYLOAD))
    with pytest.raises(DataError, match="run again to resume"):
        fetch(remote, dest, progress=False)
    part = tmp_path / "f.bin.part"
    assert not dest.exists() and 0 < part.stat().st_size < len(PAYLOAD)
    have = part.stat().st_size
    fetch(remote, dest, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests[-1] == ("/f.bin", f"bytes={have}-")
    assert not part.exists()


def test_concurrent_fetches_download_once(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    dest = tmp_path / "f.bin"
    remote = RemoteFile(server.url + "/f.bin", sha256(PAYLOAD))
    threads = [threading.Thread(target=fetch, args=(remote, dest), kwargs={"progress": False}) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert dest.read_bytes() == PAYLOAD
    assert len(server.requests) == 1  # the others waited on the lock and found the file


def test_checksum_mismatch_removes_the_partial_file(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    dest = tmp_path / "f.bin"
    with pytest.raises(DataError, match="checksum mismatch"):
        fetch(RemoteFile(server.url + "/f.bin", sha256(b"something else")), dest, progress=False)
    assert not dest.exists() and not (tmp_path / "f.bin.part").exists()


def test_md5_checksums_are_supported(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    md5 = "md5:" + hashlib.md5(PAYLOAD).hexdigest()
    fetch(RemoteFile(server.url + "/f.bin", md5), tmp_path / "f.bin", progress=False)
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD


def test_http_error_names_url_and_path(server, tmp_path):
    url = server.url + "/absent.txt"
    with pytest.raises(DataError) as err:
        fetch(RemoteFile(url), tmp_path / "absent.txt", progress=False)
    assert "HTTP 404" in str(err.value) and url in str(err.value) and str(tmp_path / "absent.txt") in str(err.value)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_offline_error_names_url_and_exact_path(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/Beauty.txt"
    dest = tmp_path / "Beauty" / "Beauty.txt"
    with pytest.raises(DataError) as err:
        require_file(dest, RemoteFile(url), download=True)
    message = str(err.value)
    assert url in message and str(dest) in message and "\n" not in message
    assert not dest.exists()


def test_download_disabled_names_url_and_path(tmp_path):
    dest = tmp_path / "x.txt"
    with pytest.raises(DataError) as err:
        require_file(dest, RemoteFile("https://example.org/x.txt"), download=False)
    assert "https://example.org/x.txt" in str(err.value) and str(dest) in str(err.value)


def test_existing_file_is_used_without_network(tmp_path):
    dest = tmp_path / "x.txt"
    dest.write_text("here")
    assert require_file(dest, RemoteFile("http://127.0.0.1:1/never"), download=True) == dest


def test_data_root_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_DATA_DIR", str(tmp_path / "env"))
    assert data_root(DataConfig(root=str(tmp_path / "cfg"))) == tmp_path / "cfg"
    assert data_root(DataConfig()) == tmp_path / "env"
    monkeypatch.delenv("ZOO_DATA_DIR")
    assert data_root(DataConfig()) == user_cache_dir()


# -- the download routes of the sources ----------------------------------------------------------------------------
def _ml1m_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in ("ratings.dat", "movies.dat", "users.dat"):
            archive.write(FIXTURES / "ml-1m" / name, f"ml-1m/{name}")
    return buffer.getvalue()


def test_ml1m_downloads_from_upstream_when_missing(server, tmp_path, monkeypatch):
    payload = _ml1m_zip()
    server.files["/ml-1m.zip"] = payload
    monkeypatch.setattr(ml1m, "ML1M_REMOTE", RemoteFile(server.url + "/ml-1m.zip", sha256(payload)))
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))
    corpus = load_corpus(DataConfig(name="ml1m", root=str(tmp_path)))
    assert (tmp_path / "ml-1m" / "ml-1m.zip").read_bytes() == payload
    assert (corpus.num_users, corpus.num_items, corpus.num_interactions) == (3, 4, 7)
    assert corpus.title(3) == "Amélie"


def test_ml1m_offline_error_names_grouplens_url_and_path(tmp_path):
    with pytest.raises(DataError) as err:
        load_corpus(DataConfig(name="ml1m", root=str(tmp_path), download=False, cache=False))
    assert ml1m.ML1M_REMOTE.url in str(err.value)
    assert str(tmp_path / "ml-1m" / "ml-1m.zip") in str(err.value)


def _serve_s3rec(server, monkeypatch, attributes: bool) -> bytes:
    sequences = (FIXTURES / "s3rec" / "Tiny.txt").read_bytes()
    attrs = b'{"2": [7, 8]}'
    server.files["/s3rec/Beauty.txt"] = sequences
    if attributes:
        server.files["/s3rec/Beauty_item2attributes.json"] = attrs
    monkeypatch.setattr(amazon, "S3REC_URL", server.url + "/s3rec/")
    beauty = dataclasses.replace(
        amazon.AMAZON["beauty"],
        sequence_sha256=sha256(sequences).split(":")[1],
        attributes_sha256=sha256(attrs).split(":")[1],
    )
    monkeypatch.setitem(amazon.AMAZON, "beauty", beauty)
    return sequences


def test_amazon_sequence_route_downloads_the_s3rec_files(server, tmp_path, monkeypatch):
    sequences = _serve_s3rec(server, monkeypatch, attributes=True)
    corpus = load_corpus(DataConfig(name="beauty", root=str(tmp_path), cache=False))
    assert (tmp_path / "Beauty" / "Beauty.txt").read_bytes() == sequences
    assert (corpus.num_users, corpus.num_items, corpus.num_interactions) == (3, 5, 11)
    assert corpus.item_text["attributes"][2] == "7 8"
    assert "title" not in corpus.item_text  # titles are not published upstream with the S3-Rec files


def test_amazon_download_without_upstream_attributes_still_loads(server, tmp_path, monkeypatch, caplog):
    _serve_s3rec(server, monkeypatch, attributes=False)
    with caplog.at_level(logging.WARNING):
        corpus = load_corpus(DataConfig(name="beauty", root=str(tmp_path), cache=False))
    assert corpus.num_users == 3 and "attributes" not in corpus.item_text
    assert "without item attributes" in caplog.text


def test_amazon_raw_route_offline_names_the_amazon_url(tmp_path):
    with pytest.raises(DataError) as err:
        load_corpus(DataConfig(name="toys", root=str(tmp_path), k_core=5, download=False, cache=False))
    assert "reviews_Toys_and_Games_5.json.gz" in str(err.value)
    assert amazon.AMAZON_2014_URL in str(err.value)
    assert str(tmp_path / "Toys_and_Games" / "raw") in str(err.value)


def test_amazon_raw_route_downloads_reviews_and_meta(server, tmp_path, monkeypatch):
    for name in ("reviews_Beauty_5.json", "meta_Beauty.json"):
        server.files[f"/amazon/{name}.gz"] = gzip.compress((FIXTURES / "amazon2014" / name).read_bytes())
    monkeypatch.setattr(amazon, "AMAZON_2014_URL", server.url + "/amazon/")
    corpus = load_corpus(DataConfig(name="beauty", root=str(tmp_path), k_core=2, cache=False))
    assert (corpus.num_users, corpus.num_items, corpus.num_interactions) == (3, 3, 8)
    assert (tmp_path / "Beauty" / "raw" / "meta_Beauty.json.gz").is_file()
