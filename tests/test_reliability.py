"""Regression tests for reliability defects: data loss on unpack, serving k beyond the catalogue,
byte-order marks, negative timestamps, duplicate rows, and Amazon without metadata."""

from __future__ import annotations

import io
import json
import logging
import math
import os
import platform
import subprocess
import sys
import zipfile
from pathlib import Path

import polars as pl
import pytest
import torch

from distillrec.cli import main as cli_main
from distillrec.cli import recommend
from distillrec.data.download import unpack
from distillrec.data.ingest import run_ingest
from distillrec.data.sources import load_source, movielens
from distillrec.data.split import run_split
from distillrec.errors import BadLineError, DataError, MissingFilesError
from distillrec.params import IngestParams, SplitParams, validate_teacher
from distillrec.teachers.registry import teacher_class
from distillrec.teachers.data import TeacherData
from tests import rawfiles as rf
from tests.rawfiles import BOM, gz, lines, review
from tests.test_bad_inputs import N_ITEMS, write_student


def _zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for name, data in entries.items():
            bundle.writestr(name, data)
    return buffer.getvalue()


# ---------------------------------------------------------------- 1. unpacking never deletes user files

def test_unpack_keeps_a_users_folder_byte_for_byte(tmp_path, caplog):
    raw = tmp_path / "raw"
    user = {"ml-1m/notes.txt": b"my own notes\n", "ml-1m/README": b"my edited readme\n",
            "ml-1m/sub/keep.bin": bytes(range(256))}
    for name, data in user.items():
        (raw / name).parent.mkdir(parents=True, exist_ok=True)
        (raw / name).write_bytes(data)
    archive = tmp_path / "ml-1m.zip"
    archive.write_bytes(_zip({"ml-1m/README": b"archive readme\n", "ml-1m/ratings.dat": b"1::2::3::4\n",
                              "ml-1m/sub/new.txt": b"new\n", "top.txt": b"top\n"}))
    with caplog.at_level(logging.WARNING):
        kept = unpack(archive, raw)
    for name, data in user.items():
        assert (raw / name).read_bytes() == data, name  # never deleted, never overwritten
    assert (raw / "ml-1m" / "ratings.dat").read_bytes() == b"1::2::3::4\n"  # new files moved in
    assert (raw / "ml-1m" / "sub" / "new.txt").read_bytes() == b"new\n"
    assert (raw / "top.txt").read_bytes() == b"top\n"
    assert kept == [raw / "ml-1m" / "README"]
    assert "kept 1 existing file(s)" in caplog.text and str(raw / "ml-1m" / "README") in caplog.text
    assert sorted(p.name for p in raw.iterdir()) == ["ml-1m", "top.txt"]  # no staging folder left


def test_download_into_a_partly_filled_folder_keeps_the_users_files(tmp_path, monkeypatch):
    """`download: true` with a user's partial raw/ml-1m/ (no movies.dat): the archive fills the gaps."""
    served = tmp_path / "served"
    served.mkdir()
    (served / "ml-1m.zip").write_bytes(_zip({"ml-1m/ratings.dat": b"1::10::4::100\n2::10::5::101\n",
                                             "ml-1m/movies.dat": b"10::Ten (1995)::Drama\n"}))
    monkeypatch.setattr(movielens, "URL", served.as_uri() + "/{name}.zip")
    raw = tmp_path / "raw"
    (raw / "ml-1m").mkdir(parents=True)
    (raw / "ml-1m" / "ratings.dat").write_bytes(b"7::10::4::100\n")  # the user's own ratings
    (raw / "ml-1m" / "mine.csv").write_bytes(b"a,b\n")
    params = rf.params("movielens", raw, name="ml-1m")
    data = load_source(params.dataset, IngestParams(download=True), tmp_path / "work")
    assert (raw / "ml-1m" / "ratings.dat").read_bytes() == b"7::10::4::100\n"
    assert (raw / "ml-1m" / "mine.csv").read_bytes() == b"a,b\n"
    assert data.interactions.collect()["user_id"].to_list() == ["7"]


def test_unpack_of_a_corrupt_archive_changes_nothing(tmp_path):
    raw = tmp_path / "raw"
    (raw / "ml-1m").mkdir(parents=True)
    (raw / "ml-1m" / "notes.txt").write_text("mine")
    archive = tmp_path / "ml-1m.zip"
    archive.write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(DataError, match="not a valid zip"):
        unpack(archive, raw)
    assert [p.name for p in raw.iterdir()] == ["ml-1m"] and (raw / "ml-1m" / "notes.txt").read_text() == "mine"


# ---------------------------------------------------------------- 2. serving: k, padding, seen items

@pytest.fixture
def student(tmp_path) -> Path:
    write_student(tmp_path / "student")
    return tmp_path / "student"


def test_k_beyond_what_can_be_recommended_is_capped_with_a_warning(student, capsys):
    history = ["i01", "i02", "i03", "i02"]  # 3 distinct items seen
    cli_main(["recommend", "--model", str(student), "--history", ",".join(history), "--k", "50"])
    captured = capsys.readouterr()
    ids = [line.split()[1] for line in captured.out.strip().splitlines()[2:]]  # after the header and labels
    assert len(ids) == N_ITEMS - 3 and len(set(ids)) == len(ids)
    assert not set(ids) & set(history)  # never an already-seen item
    assert "--k 50 is more than the 9 items that can be recommended" in captured.err
    assert "-3.4" not in captured.out  # no item scored with the 'excluded' sentinel


def test_k_equal_to_the_catalogue_never_returns_padding(student, caplog):
    with caplog.at_level(logging.WARNING, logger="distillrec.cli"):
        rows = recommend(student, ["i01"], N_ITEMS, keep_seen=True).recommendations
    assert [r["rank"] for r in rows] == list(range(1, N_ITEMS + 1))
    assert sorted(r["item_id"] for r in rows) == [f"i{k:02d}" for k in range(1, N_ITEMS + 1)]  # every item, never 0
    assert not caplog.text  # nothing was cut: no warning
    rows = recommend(student, ["i01"], N_ITEMS, keep_seen=False).recommendations
    assert len(rows) == N_ITEMS - 1 and "i01" not in [r["item_id"] for r in rows]
    assert "listing all 11" in caplog.text
    scores = [r["score"] for r in rows]
    assert all(math.isfinite(x) for x in scores) and scores == sorted(scores, reverse=True)


def test_k_within_the_catalogue_is_unchanged(student, caplog):
    with caplog.at_level(logging.WARNING):
        rows = recommend(student, ["i05", "i06"], 4, keep_seen=False).recommendations
    assert len(rows) == 4 and not caplog.text
    assert not {"i05", "i06"} & {r["item_id"] for r in rows}


def test_a_history_of_the_whole_catalogue_is_a_clear_error(student, capsys):
    everything = ",".join(f"i{k:02d}" for k in range(1, N_ITEMS + 1))
    with pytest.raises(SystemExit) as info:
        cli_main(["recommend", "--model", str(student), "--history", everything])
    assert info.value.code == 2 and "nothing to recommend" in capsys.readouterr().err


# ---------------------------------------------------------------- 3. one BOM rule for every text source

def _with_bom(files: dict[str, bytes], name: str, compress: bool = False) -> dict[str, bytes]:
    """`files` with a BOM before the first byte of `name` (gzipped again when it is a .gz)."""
    out = dict(files)
    if name.endswith(".gz"):
        import gzip
        out[name] = gz(BOM + gzip.decompress(files[name]))
    elif compress:
        del out[name]
        out[name + ".gz"] = gz(BOM + files[name])
    else:
        out[name] = BOM + files[name]
    return out


BOM_CASES = [
    ("sequences", rf.valid_sequences, "Beauty.txt", 2018),
    ("movielens", rf.valid_udata, "u.data", 2018),
    ("movielens", rf.valid_udata, "u.item", 2018),
    ("movielens", rf.valid_ratings_dat, "ratings.dat", 2018),
    ("movielens", rf.valid_ratings_dat, "movies.dat", 2018),
    ("movielens", rf.valid_ratings_csv, "ratings.csv", 2018),
    ("movielens", rf.valid_ratings_csv, "movies.csv", 2018),
    ("recbole", rf.valid_recbole, "toy.inter", 2018),
    ("recbole", rf.valid_recbole, "toy.item", 2018),
    ("amazon", rf.valid_amazon, "Video_Games_5.json.gz", 2018),
    ("amazon", rf.valid_amazon, "meta_Video_Games.json.gz", 2018),
    ("amazon", rf.valid_amazon_2014, "meta_Video_Games.json.gz", 2014),
    ("lcrec", rf.valid_lcrec, "Office.inter.json", 2018),
    ("lcrec", rf.valid_lcrec, "Office.item.json", 2018),
    ("unisrec", rf.valid_unisrec, "Office.train.inter", 2018),
]


def _load(raw: Path, source: str, version: int = 2018, on_bad_line: str = "error", work: Path | None = None):
    params = rf.params(source, raw, on_bad_line, version=version)
    data = load_source(params.dataset, params.ingest, work or raw.parent / "work")
    return data, data.interactions.collect(), data.items.collect()


BOM_PARAMS = [pytest.param(*case, compress, id=f"{case[0]}-{case[2]}-{case[3]}{'-gz' if compress else ''}")
              for case in BOM_CASES for compress in (False, True) if not (compress and case[2].endswith(".gz"))]


@pytest.mark.parametrize(("source", "base", "name", "version", "compress"), BOM_PARAMS)
def test_a_leading_bom_is_stripped_in_every_source(tmp_path, source, base, name, version, compress):
    _, plain_inter, plain_items = _load(rf.write(tmp_path / "plain", base()), source, version, work=tmp_path / "w1")
    raw = rf.write(tmp_path / "bom", _with_bom(base(), name, compress))
    _, inter, items = _load(raw, source, version, work=tmp_path / "w2")
    assert inter.equals(plain_inter)  # the first user/item id is not '\ufeff...'
    assert items.equals(plain_items)
    for frame in (inter, items):
        for column, dtype in frame.schema.items():
            if dtype == pl.String:
                assert not frame[column].str.contains("\ufeff", literal=True).any(), column


def test_bom_is_stripped_on_the_line_by_line_path_too(tmp_path):
    """A bad line sends u.data through polars' line reader, which keeps a BOM: the first user stays '1'."""
    files = rf.valid_udata()
    files["u.data"] = BOM + lines("1\t10\t4\t100", "2\t10\tbad\t101", "3\t20\t4\t102")
    _, inter, _ = _load(rf.write(tmp_path / "raw", files), "movielens", on_bad_line="skip")
    assert inter["user_id"].to_list() == ["1", "3"]
    files["u.data"] = BOM + lines("1\t10\t4\t100") + b"2\t10\t\xff\t101\n" + lines("3\t20\t4\t102")  # Python path
    _, inter, _ = _load(rf.write(tmp_path / "raw2", files), "movielens", on_bad_line="skip")
    assert inter["user_id"].to_list() == ["1", "3"]


def test_a_bom_inside_a_file_is_data_not_stripped(tmp_path):
    """Only a leading BOM is an encoding mark; one on a later line is that line's problem."""
    files = {"Beauty.txt": lines("u1 a b") + BOM + lines("u2 c d")}
    _, inter, _ = _load(rf.write(tmp_path / "raw", files), "sequences")
    assert inter["user_id"].unique(maintain_order=True).to_list() == ["u1", "\ufeffu2"]


# ---------------------------------------------------------------- 6. negative timestamps, duplicates

@pytest.mark.parametrize(("source", "base", "changes", "file"), [
    ("movielens", rf.valid_udata, {"u.data": lines("1\t10\t4\t100", "2\t20\t3\t-1", "3\t20\t3\t101")}, "u.data"),
    ("recbole", rf.valid_recbole, {"toy.inter": lines(rf.INTER_HEADER, "1\t10\t4\t100", "2\t20\t3\t-1.5",
                                                      "3\t20\t3\t101")}, "toy.inter"),
    ("amazon", rf.valid_amazon, {"Video_Games_5.json.gz": gz(lines(review("1", "B1"), review("2", "B2", -1),
                                                                   review("3", "B2", 101)))}, "Video_Games_5.json.gz"),
])
def test_negative_timestamps_are_bad_lines(tmp_path, source, base, changes, file):
    raw = rf.write(tmp_path / "raw", base() | changes)
    with pytest.raises(BadLineError, match="negative") as info:
        _load(raw, source)
    assert (info.value.path, info.value.lineno) == (str(raw / file), 2 + (source == "recbole"))
    data, inter, _ = _load(raw, source, on_bad_line="skip")
    assert inter["user_id"].to_list() == ["1", "3"]
    assert data.dropped == {f"bad_line:{file}": 1}


def test_exact_duplicate_rows_are_kept_counted_and_warned_about(tmp_path, caplog):
    files = rf.valid_udata()
    files["u.data"] = lines("1\t10\t4\t100", "1\t10\t4\t100", "1\t20\t3\t101", "1\t10\t4\t100", "1\t10\t5\t100")
    raw = rf.write(tmp_path / "raw", files)
    with caplog.at_level(logging.WARNING):
        manifest = run_ingest(rf.params("movielens", raw), tmp_path / "interim")
    assert manifest["interactions"] == 5  # kept: no param asks to drop them
    assert manifest["duplicates"] == 2  # rows 2 and 4 repeat row 1; row 5 differs in its rating
    assert json.loads((tmp_path / "interim" / "manifest.json").read_text())["duplicates"] == 2
    assert "2 interaction rows repeat an earlier row exactly" in caplog.text


def test_no_duplicates_no_warning(tmp_path, caplog):
    raw = rf.write(tmp_path / "raw", rf.valid_udata())
    with caplog.at_level(logging.WARNING):
        manifest = run_ingest(rf.params("movielens", raw), tmp_path / "interim")
    assert manifest["duplicates"] == 0 and "repeat an earlier row" not in caplog.text


# ---------------------------------------------------------------- 7. Amazon without metadata

def _amazon_reviews(n_users: int = 8, n_items: int = 6) -> bytes:
    rows = [review(f"A{u}", f"B{(u + k) % n_items}", time=1000 + k) for u in range(n_users) for k in range(5)]
    return gz(lines(*rows))


def test_amazon_reviews_without_metadata_ingest_with_a_warning(tmp_path, caplog):
    raw = rf.write(tmp_path / "raw", {"Video_Games_5.json.gz": _amazon_reviews()})
    with caplog.at_level(logging.WARNING):
        manifest = run_ingest(rf.params("amazon", raw), tmp_path / "interim")
    assert manifest["items"] == 6 and manifest["items_without_title"] == 6
    assert [Path(f["path"]).name for f in manifest["files"]] == ["Video_Games_5.json.gz"]
    assert "no metadata file meta_Video_Games.json.gz" in caplog.text
    items = pl.read_parquet(tmp_path / "interim" / "items.parquet")
    assert items["title"].null_count() == 6


def test_amazon_without_metadata_and_downloads_on_says_how_to_go_without(tmp_path, monkeypatch):
    from distillrec.data.sources import amazon

    def offline(url, dest, sha256=None, size=None):
        raise OSError("network unreachable")

    monkeypatch.setattr(amazon, "fetch", offline)
    raw = rf.write(tmp_path / "raw", {"Video_Games_5.json.gz": _amazon_reviews()})
    params = rf.params("amazon", raw)
    with pytest.raises(MissingFilesError) as info:
        load_source(params.dataset, IngestParams(download=True), tmp_path / "work")
    message = str(info.value)
    assert f"{raw}/meta_Video_Games.json.gz" in message and "set ingest.download: false" in message
    assert "Video_Games_5.json.gz" not in message.split("expected:")[1].split("\n")[1]  # only meta is listed


def test_the_causal_teacher_refuses_items_without_titles_clearly(tmp_path):
    raw = rf.write(tmp_path / "raw", {"Video_Games_5.json.gz": _amazon_reviews()})
    params = rf.params("amazon", raw).model_copy(update={"split": SplitParams(user_core=0, item_core=0)})
    run_ingest(params, tmp_path / "interim")
    run_split(params, tmp_path / "interim", tmp_path / "processed", tmp_path / "data.json")
    data = TeacherData.load(tmp_path / "processed")
    cfg = validate_teacher({"family": "causal"})
    with pytest.raises(DataError) as info:
        teacher_class("causal").create(cfg, data)
    message = str(info.value)
    assert "6 of 6 items have no title" in message
    assert "the causal teacher lists items by title" in message
    assert "Amazon with metadata" in message


def test_weights_only_refuses_a_pickle_in_model_pt_without_running_it(student, tmp_path):
    class Opens:
        def __reduce__(self):
            return open, (str(tmp_path / "ran"), "w")

    torch.save(Opens(), student / "model.pt")
    with pytest.raises(SystemExit):
        cli_main(["recommend", "--model", str(student), "--history", "i01"])
    assert not (tmp_path / "ran").exists()


# --- one writer per checkpoint folder -------------------------------------------------------------

def dead_pid() -> int:
    """The pid of a process that has exited (what a killed run leaves in its lock and temp names)."""
    import subprocess
    import sys

    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)


def test_a_checkpoint_folder_held_by_a_live_process_is_refused_and_a_stale_lock_taken_over(tmp_path, caplog):
    import os

    from distillrec.io import LOCK, folder_lock

    folder = tmp_path / "ckpt"
    with folder_lock(folder):
        assert (folder / LOCK).read_text() == str(os.getpid())
        with pytest.raises(DataError, match=rf"{folder} is in use by process {os.getpid()}.*delete .*\.lock"):
            with folder_lock(folder):
                pass
    assert not (folder / LOCK).exists()   # released
    # a lock left by a process that no longer runs (a killed stage) is taken over
    dead = dead_pid()
    (folder / LOCK).write_text(str(dead))
    with caplog.at_level(logging.WARNING), folder_lock(folder):
        assert (folder / LOCK).read_text() == str(os.getpid())
    assert f"taking over the lock of process {dead}" in caplog.text and not (folder / LOCK).exists()


def test_a_killed_writers_temporary_output_is_removed_by_the_next_write(tmp_path, caplog):
    """SIGKILL leaves `.<name>.tmp-<pid>` (and, mid-replace, `.<name>.old-<pid>`): the next write of
    <name> removes those of dead processes, and nothing of a live writer or of another output."""
    import os

    from distillrec.io import atomic_dir, atomic_file

    dead = dead_pid()
    stale = [tmp_path / f".out.tmp-{dead}", tmp_path / f".out.old-{dead}"]
    for folder in stale:
        folder.mkdir()
        (folder / "half.parquet").write_bytes(b"PAR1")
    (tmp_path / f".out.json.tmp-{dead}").write_text("{")
    kept = [tmp_path / f".out.tmp-{os.getppid()}", tmp_path / f".other.tmp-{dead}", tmp_path / f".out.tmp-{dead}x"]
    for folder in kept:
        folder.mkdir()
    with caplog.at_level(logging.INFO, logger="distillrec.io"), atomic_dir(tmp_path / "out") as tmp:
        (tmp / "done.parquet").write_bytes(b"PAR1")
    left = {"out", f".out.json.tmp-{dead}", *(p.name for p in kept)}   # out.json's is not this write's
    assert {p.name for p in tmp_path.iterdir()} == left
    assert all(f"removing {p}, left by a run that was killed" in caplog.text for p in stale)
    with atomic_file(tmp_path / "out.json") as tmp:
        tmp.write_text("{}")
    assert not (tmp_path / f".out.json.tmp-{dead}").exists() and (tmp_path / "out.json").read_text() == "{}"


def test_training_refuses_a_checkpoint_folder_another_run_is_writing(tmp_path, small_split):
    import os

    from distillrec.io import LOCK
    from distillrec.params import Params, StudentParams, TrainParams
    from distillrec.train.run import train_student

    params = Params(student=StudentParams(hidden=16, layers=1, heads=1, max_length=10),
                    train=TrainParams(epochs=1, seeds=[1]))
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / LOCK).write_text(str(os.getppid()))   # a live process (pytest's parent) holds it
    with pytest.raises(DataError, match="is in use by process"):
        train_student(params, small_split, tmp_path / "out", ckpt, tmp_path / "live")
    assert not (tmp_path / "out").exists()   # nothing written
    (ckpt / LOCK).unlink()
    train_student(params, small_split, tmp_path / "out", ckpt, tmp_path / "live")
    assert not (ckpt / LOCK).exists() and (ckpt / "checkpoint.pt").is_file()



@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="the pins apply to x86-64 only")
def test_importing_distillrec_pins_torchs_cpu_kernels_to_avx2_unless_the_user_chose():
    """Other machines' CPUs pick other kernels (docs/reliability.md): the package pins them first."""
    probe = ("import os, distillrec, torch; print(torch.backends.cpu.get_cpu_capability(), "
             "os.environ['MKL_CBWR'], os.environ['ONEDNN_MAX_CPU_ISA'])")
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["AVX2", "AVX2", "AVX2"]
    chosen = subprocess.run([sys.executable, "-c", probe], env=env | {"ATEN_CPU_CAPABILITY": "default"},
                            capture_output=True, text=True, check=True).stdout
    assert chosen.split()[0] == "DEFAULT"
