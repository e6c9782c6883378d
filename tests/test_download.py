"""fetch/unpack/ensure_raw_files against a local HTTP server: never the internet."""

from __future__ import annotations

import hashlib
import http.server
import io
import socket
import threading
import zipfile
from functools import partial

import pytest

from distillrec.data.download import ensure_raw_files, fetch, unpack
from distillrec.errors import DataError, MissingFilesError

PAYLOAD = bytes(range(256)) * 5000  # > 1 MiB: several chunks


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def served(tmp_path):
    """(folder served over HTTP, base URL) on 127.0.0.1."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield folder, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def _zip(entries: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for name, text in entries.items():
            bundle.writestr(name, text)
    return buffer.getvalue()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_fetch_verifies_size_and_sha256(served, tmp_path):
    folder, base = served
    (folder / "blob.bin").write_bytes(PAYLOAD)
    dest = tmp_path / "out" / "blob.bin"
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    assert fetch(f"{base}/blob.bin", dest, sha256=digest, size=len(PAYLOAD)) == dest
    assert dest.read_bytes() == PAYLOAD
    assert [p.name for p in dest.parent.iterdir()] == ["blob.bin"]  # no temp file left


def test_fetch_file_url(tmp_path):
    source = tmp_path / "blob.bin"
    source.write_bytes(PAYLOAD)
    dest = fetch(source.as_uri(), tmp_path / "copy.bin")
    assert dest.read_bytes() == PAYLOAD


@pytest.mark.parametrize(
    "kwargs, match",
    [({"sha256": "0" * 64}, "corrupt: sha256"), ({"size": len(PAYLOAD) + 1}, "incomplete")],
)
def test_fetch_mismatch_is_a_clear_error_and_leaves_nothing(served, tmp_path, kwargs, match):
    folder, base = served
    (folder / "blob.bin").write_bytes(PAYLOAD)
    dest = tmp_path / "out" / "blob.bin"
    with pytest.raises(DataError, match=match) as info:
        fetch(f"{base}/blob.bin", dest, **kwargs)
    assert f"{base}/blob.bin" in str(info.value)
    assert list(dest.parent.iterdir()) == []


def test_unpack_zip_and_reject_corrupt(tmp_path):
    archive = tmp_path / "a.zip"
    archive.write_bytes(_zip({"inner/x.txt": "x", "y.txt": "y"}))
    unpack(archive, tmp_path / "dest")
    assert (tmp_path / "dest" / "inner" / "x.txt").read_text() == "x"
    assert sorted(p.name for p in (tmp_path / "dest").iterdir()) == ["inner", "y.txt"]
    archive.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a valid zip"):
        unpack(archive, tmp_path / "dest")


def test_ensure_downloads_and_unpacks(served, tmp_path):
    folder, base = served
    data = _zip({"ratings.csv": "userId\n", "movies.csv": "movieId\n"})
    (folder / "d.zip").write_bytes(data)
    raw = tmp_path / "raw"
    downloads = [(f"{base}/d.zip", "d.zip", hashlib.sha256(data).hexdigest())]
    ensure_raw_files(raw, ["ratings.csv", "movies.csv"], downloads, allow=True)
    assert (raw / "ratings.csv").read_text() == "userId\n"
    ensure_raw_files(raw, ["ratings.csv", "movies.csv"], [], allow=False)  # present: no-op


def test_ensure_archive_without_expected_files(served, tmp_path):
    folder, base = served
    (folder / "d.zip").write_bytes(_zip({"other.txt": ""}))
    with pytest.raises(MissingFilesError, match="did not contain"):
        downloads = [(f"{base}/d.zip", "d.zip", None)]
        ensure_raw_files(tmp_path / "raw", ["ratings.csv"], downloads, allow=True)


def test_offline_lists_expected_files(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/ml-1m.zip"
    raw = tmp_path / "raw"
    with pytest.raises(MissingFilesError) as info:
        ensure_raw_files(raw, ["ratings.dat", "movies.dat"], [(url, "ml-1m.zip", None)], allow=True)
    message = str(info.value)
    assert f"{raw}/ratings.dat" in message and f"{raw}/movies.dat" in message
    assert url in message and "failed" in message
    assert not (raw / "ml-1m.zip").exists()


def test_download_disabled_lists_files_and_url(tmp_path):
    url = "https://example.invalid/data.zip"
    with pytest.raises(MissingFilesError) as info:
        ensure_raw_files(tmp_path, ["a.csv"], [(url, "data.zip", None)], allow=False, hint="HINT")
    message = str(info.value)
    assert f"{tmp_path}/a.csv" in message and url in message
    assert "ingest.download is false" in message and "HINT" in message
