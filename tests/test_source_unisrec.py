"""UniSRec-style processed data: fixtures written from known sequences by UniSRec's own rule."""

from __future__ import annotations

import gzip
import random
from pathlib import Path

import polars as pl
import pytest

from distillrec.data.ingest import run_ingest
from distillrec.data.sources import unisrec
from distillrec.data.split import run_split
from distillrec.errors import BadLineError, DataError, MissingFilesError
from distillrec.params import DatasetParams, IngestParams, Params, SplitParams

HEADER = "user_id:token\titem_id_list:token_seq\titem_id:token"


def make_sequences() -> dict[str, list[str]]:
    """Raw user id -> raw item ids in time order: short users, one without train rows, one > 50."""
    rng = random.Random(7)
    pool = [f"B{k:04d}X" for k in range(40)]
    return {
        "AU7": ["B0001X", "B0002X", "B0003X", "B0004X", "B0001X", "B0005X"],
        "AU2": [rng.choice(pool) for _ in range(60)],
        "AU9": ["B0003X", "B0006X", "B0002X"],  # train part of one item: no train rows
        "AU1": ["B0007X", "B0003X", "B0008X", "B0009X"],  # one train row
    }


SEQUENCES = make_sequences()


def indices(sequences: dict[str, list[str]]) -> tuple[dict[str, int], dict[str, int]]:
    """Index files numbered in a different order than the raw ids sort, as in UniSRec's output."""
    users = {u: k for k, u in enumerate(sequences)}
    items: dict[str, int] = {}
    for sequence in sequences.values():
        for item in sequence:
            items.setdefault(item, len(items) + 1)
    return users, items


def atomic_files(sequences: dict[str, list[str]]) -> dict[str, list[str]]:
    """The lines of each file, written the way UniSRec's convert_to_atomic_files writes them."""
    user2index, item2index = indices(sequences)
    out: dict[str, list[str]] = {"train.inter": [HEADER], "valid.inter": [HEADER], "test.inter": [HEADER]}
    for user, sequence in sequences.items():
        uid, seq = user2index[user], [str(item2index[i]) for i in sequence]
        train = seq[:-2]
        for target_idx in range(1, len(train)):
            history = train[:-target_idx][-50:]
            out["train.inter"].append(f"{uid}\t{' '.join(history)}\t{train[-target_idx]}")
        out["valid.inter"].append(f"{uid}\t{' '.join(train[-50:])}\t{seq[-2]}")
        out["test.inter"].append(f"{uid}\t{' '.join((train + seq[-2:-1])[-50:])}\t{seq[-1]}")
    out["user2index"] = [f"{u}\t{k}" for u, k in user2index.items()]
    out["item2index"] = [f"{i}\t{k}" for i, k in item2index.items()]
    out["text"] = ["item_id:token\ttext:token_seq"] + [
        f"{i}\tTitle {i}. Office, Paper. Brand{k % 3}." if k != 2 else f"{i}\t " for i, k in item2index.items()]
    return out


def write(tmp_path: Path, files: dict[str, list[str]], name: str = "Toy", gz: bool = False) -> Path:
    for suffix, lines in files.items():
        data = ("\n".join(lines) + "\n").encode()
        path = tmp_path / f"{name}.{suffix}"
        if gz:
            path.with_name(path.name + ".gz").write_bytes(gzip.compress(data))
        else:
            path.write_bytes(data)
    return tmp_path


def load(raw_dir: Path, on_bad_line: str = "error", name: str = "Toy"):
    dataset = DatasetParams(source="unisrec", name=name, path=str(raw_dir))
    ingest = IngestParams(on_bad_line=on_bad_line, download=False)
    raw = unisrec.load(dataset, ingest, dataset.raw_dir, raw_dir / "work")
    return raw, raw.interactions.collect(), raw.items.collect()


def rebuilt(inter: pl.DataFrame) -> dict[str, list[str]]:
    assert inter.schema == {"user_id": pl.String, "item_id": pl.String, "timestamp": pl.Int64}
    out: dict[str, list[str]] = {}
    for user, item, timestamp in inter.iter_rows():
        out.setdefault(user, []).append(item)
        assert timestamp == len(out[user]) - 1
    return out


@pytest.mark.parametrize("gz", [False, True])
def test_rebuilds_sequences_with_raw_ids_and_text(tmp_path, gz):
    files = atomic_files(SEQUENCES)
    assert max(len(line.split("\t")[1].split()) for line in files["train.inter"][1:]) == 50  # capping matters
    write(tmp_path, files, gz=gz)
    raw, inter, items = load(tmp_path)
    assert rebuilt(inter) == SEQUENCES
    n = sum(len(s) for s in SEQUENCES.values())
    rows = {name.removesuffix(".gz"): n for name, n in raw.file_rows.items()}
    assert rows["Toy.train.inter"] == n - 3 * len(SEQUENCES) == len(files["train.inter"]) - 1
    assert rows["Toy.valid.inter"] == rows["Toy.test.inter"] == len(SEQUENCES)
    assert not raw.dropped
    assert items.schema == {"item_id": pl.String, "title": pl.String}
    titles = dict(items.iter_rows())
    assert titles["B0001X"] == "Title B0001X. Office, Paper. Brand1."
    assert titles["B0002X"] is None  # blank text becomes null


def test_without_index_files_indices_are_ids(tmp_path):
    files = atomic_files(SEQUENCES)
    del files["user2index"], files["item2index"], files["text"]
    write(tmp_path, files)
    raw, inter, items = load(tmp_path)
    users, item_index = indices(SEQUENCES)
    assert rebuilt(inter) == {str(users[u]): [str(item_index[i]) for i in s] for u, s in SEQUENCES.items()}
    assert items.height == 0 and [p.name for p in raw.files] == ["Toy.train.inter", "Toy.valid.inter", "Toy.test.inter"]


def test_utf8_bom_is_stripped(tmp_path):
    files = atomic_files(SEQUENCES)
    for key in ("train.inter", "user2index", "item2index", "text"):
        files[key][0] = "\ufeff" + files[key][0]
    write(tmp_path, files)
    _, inter, items = load(tmp_path)
    assert rebuilt(inter) == SEQUENCES and "B0001X" in items["item_id"].to_list()


def line_of(files: dict[str, list[str]], suffix: str, user: str, nth: int = 0) -> int:
    """0-based index into files[suffix] of the user's nth row."""
    uid = str(indices(SEQUENCES)[0][user])
    return [k for k, line in enumerate(files[suffix]) if k and line.split("\t")[0] == uid][nth]


def break_field_count(files):
    k = line_of(files, "valid.inter", "AU9")
    files["valid.inter"][k] = files["valid.inter"][k].rsplit("\t", 1)[0]
    return "valid.inter", k, "expected 3 tab-separated fields", "AU9", {"valid.inter": 1, "test.inter": 1}


def break_integer(files):
    k = line_of(files, "train.inter", "AU2", nth=20)
    files["train.inter"][k] = files["train.inter"][k].replace(" ", " x", 1)
    return "train.inter", k, "not an integer index: 'x", "AU2", {"train.inter": 2}


def break_valid_history(files):
    k = line_of(files, "valid.inter", "AU7")
    uid, history, target = files["valid.inter"][k].split("\t")
    files["valid.inter"][k] = f"{uid}\t{' '.join(history.split()[1:])}\t{target}"
    return "valid.inter", k, "item_id_list must be the last <= 50 items", "AU7", {"valid.inter": 1}


def break_test_history(files):
    k = line_of(files, "test.inter", "AU2")
    uid, history, target = files["test.inter"][k].split("\t")
    files["test.inter"][k] = f"{uid}\t{' '.join(history.split()[:-1])}\t{target}"
    return "test.inter", k, "the train part and the valid target", "AU2", {"test.inter": 1}


def break_train_order(files):
    k = line_of(files, "train.inter", "AU7", nth=1)
    files["train.inter"][k], files["train.inter"][k + 1] = files["train.inter"][k + 1], files["train.inter"][k]
    return "train.inter", k - 1, "rebuilt from the user's train rows", "AU7", {"train.inter": 1}  # the newest row


def break_unknown_item(files):
    k = line_of(files, "test.inter", "AU1")
    files["test.inter"][k] = files["test.inter"][k].rsplit("\t", 1)[0] + "\t999"
    return "test.inter", k, "item index 999 is not in the item2index file", "AU1", {"test.inter": 1}


def break_missing_valid(files):
    k = line_of(files, "valid.inter", "AU1")
    del files["valid.inter"][k]
    first = line_of(files, "train.inter", "AU1")
    return "train.inter", first, "no row in the valid file", "AU1", {"train.inter": 1}


@pytest.mark.parametrize("breaker", [break_field_count, break_integer, break_valid_history, break_test_history,
                                     break_train_order, break_unknown_item, break_missing_valid])
def test_bad_rows_name_file_and_line_or_drop_the_user(tmp_path, breaker):
    files = atomic_files(SEQUENCES)
    suffix, k, reason, user, counts = breaker(files)
    write(tmp_path, files)
    with pytest.raises(BadLineError) as info:
        load(tmp_path)
    err = info.value
    assert err.path == str(tmp_path / f"Toy.{suffix}") and err.lineno == k + 1, str(err)
    assert reason in err.reason and f"Toy.{suffix}:{k + 1}:" in str(err)
    if breaker not in (break_field_count, break_integer):  # rows that parse name their user
        assert f"({user!r})" in err.reason
    raw, inter, _ = load(tmp_path, on_bad_line="skip")
    assert rebuilt(inter) == {u: s for u, s in SEQUENCES.items() if u != user}
    expected = {f"bad_line:Toy.{key}": n for key, n in counts.items()}
    assert raw.dropped == expected | {"users_with_inconsistent_rows": 1}


def test_user_without_train_rows_needs_a_valid_history(tmp_path):
    files = atomic_files(SEQUENCES)
    k = line_of(files, "valid.inter", "AU9")
    uid, _, target = files["valid.inter"][k].split("\t")
    files["valid.inter"][k] = f"{uid}\t\t{target}"
    write(tmp_path, files)
    with pytest.raises(BadLineError, match="no train rows and an empty item_id_list") as info:
        load(tmp_path)
    assert info.value.lineno == k + 1


def test_bad_index_file_line(tmp_path):
    files = atomic_files(SEQUENCES)
    files["item2index"][3] = files["item2index"][3].split("\t")[0] + "\t1"  # index 1 given twice
    write(tmp_path, files)
    with pytest.raises(BadLineError, match="index 1 is already given to") as info:
        load(tmp_path)
    assert (info.value.path, info.value.lineno) == (str(tmp_path / "Toy.item2index"), 4)


def test_wrong_header(tmp_path):
    files = atomic_files(SEQUENCES)
    files["valid.inter"][0] = "user_id:token\titem_id:token\titem_id_list:token_seq"
    write(tmp_path, files)
    with pytest.raises(DataError, match=r"Toy\.valid\.inter:1: expected a header"):
        load(tmp_path, on_bad_line="skip")


def test_missing_files(tmp_path):
    files = atomic_files(SEQUENCES)
    write(tmp_path, {"train.inter": files["train.inter"], "text": files["text"]})
    with pytest.raises(MissingFilesError) as info:
        load(tmp_path)
    message = str(info.value)
    for name in ("Toy.train.inter", "Toy.valid.inter", "Toy.test.inter", "Toy.item2index", "Toy.text"):
        assert f"{tmp_path}/{name}" in message


def test_leave_one_out_keeps_the_published_split(tmp_path):
    (tmp_path / "raw").mkdir()
    write(tmp_path / "raw", atomic_files(SEQUENCES))
    params = Params(dataset=DatasetParams(source="unisrec", name="Toy", path=str(tmp_path / "raw")),
                    ingest=IngestParams(download=False), split=SplitParams(user_core=0, item_core=0))
    run_ingest(params, tmp_path / "interim")
    run_split(params, tmp_path / "interim", tmp_path / "processed", tmp_path / "data.json")
    processed = tmp_path / "processed"
    targets = (pl.read_parquet(processed / "examples.parquet").filter(pl.col("split") != "train")
               .join(pl.read_parquet(processed / "user_map.parquet"), on="user_idx")
               .join(pl.read_parquet(processed / "item_map.parquet").select("item_idx", "item_id"), on="item_idx"))
    got = {(u, str(s)): i for u, s, i in targets.select("user_id", "split", "item_id").iter_rows()}
    want = {(u, split): s[k] for u, s in SEQUENCES.items() for split, k in (("valid", -2), ("test", -1))}
    assert got == want
    train = pl.read_parquet(processed / "examples.parquet").filter(pl.col("split") == "train").height
    assert train == len(atomic_files(SEQUENCES)["train.inter"]) - 1
