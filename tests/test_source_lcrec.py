"""LC-Rec-style processed Amazon JSON: small fixtures plus the real Office copy in ../shared."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from distillrec.data.ingest import run_ingest
from distillrec.data.sources import lcrec
from distillrec.data.split import run_split
from distillrec.errors import BadLineError, DataError, MissingFilesError
from distillrec.params import DatasetParams, IngestParams, Params, SplitParams

INTER = {"0": [0, 1, 2, 3], "1": [2, 4, 1, 0, 3], "2": [1, 3, 4, 2]}
ITEMS = {
    "0": {"title": "Stapler", "description": "Staples paper.", "brand": "Acme",
          "categories": "Office Products, Office Supplies , Staplers"},
    "1": {"title": " Pen ", "description": "", "brand": "", "categories": ""},
    "2": {"title": "", "description": "A notebook.", "brand": "Moleskine", "categories": "Paper"},
    "3": {"title": "Desk lamp", "description": "   ", "brand": "Lumo", "categories": "Lighting"},
    "4": {"title": "Tape", "description": "Clear tape.", "brand": "Acme", "categories": "Office Supplies"},
    "9": {"title": "Never bought", "description": "", "brand": "", "categories": ""},
}


def write(tmp_path: Path, inter=INTER, items=ITEMS, gz: bool = False, name: str = "Office") -> Path:
    """The files as LC-Rec writes them: json.dump(..., indent=4)."""
    for suffix, value in (("inter.json", inter), ("item.json", items)):
        if value is None:
            continue
        text = value if isinstance(value, str) else json.dumps(value, indent=4)
        path = tmp_path / f"{name}.{suffix}"
        if gz:
            path.with_name(path.name + ".gz").write_bytes(gzip.compress(text.encode()))
        else:
            path.write_text(text)
    return tmp_path


def load(raw_dir: Path, on_bad_line: str = "error", name: str = "Office"):
    dataset = DatasetParams(source="lcrec", name=name, path=str(raw_dir))
    ingest = IngestParams(on_bad_line=on_bad_line, download=False)
    raw = lcrec.load(dataset, ingest, dataset.raw_dir, raw_dir / "work")
    return raw, raw.interactions.collect(), raw.items.collect()


def line_of(text: str, needle: str) -> int:
    return next(k for k, line in enumerate(text.splitlines(), start=1) if needle in line)


@pytest.mark.parametrize("gz", [False, True])
def test_interactions_in_list_order_and_item_text(tmp_path, gz):
    write(tmp_path, gz=gz)
    raw, inter, items = load(tmp_path)
    assert inter.schema == {"user_id": pl.String, "item_id": pl.String, "timestamp": pl.Int64}
    assert inter.rows() == [(u, str(i), t) for u, history in INTER.items() for t, i in enumerate(history)]
    suffix = ".gz" if gz else ""
    assert [p.name for p in raw.files] == [f"Office.inter.json{suffix}", f"Office.item.json{suffix}"]
    assert raw.file_rows == {f"Office.inter.json{suffix}": 3, f"Office.item.json{suffix}": 6} and not raw.dropped
    assert items.columns == ["item_id", "title", "description", "brand", "categories"]
    rows = {row[0]: row[1:] for row in items.iter_rows()}
    assert rows["0"] == ("Stapler", "Staples paper.", "Acme", ["Office Products", "Office Supplies", "Staplers"])
    assert rows["1"] == ("Pen", None, None, None)  # empty strings are no text
    assert rows["2"] == (None, "A notebook.", "Moleskine", ["Paper"])
    assert rows["3"][1] is None


def test_item_file_is_optional_and_bom_is_stripped(tmp_path):
    write(tmp_path, inter="\ufeff" + json.dumps(INTER, indent=4), items=None)
    raw, inter, items = load(tmp_path)
    assert inter.height == 13 and items.height == 0 and len(raw.files) == 1


def test_invalid_json_names_file_and_line(tmp_path):
    text = json.dumps(INTER, indent=4).replace("        4,\n", "        4\n", 1)  # a missing comma
    write(tmp_path, inter=text)
    with pytest.raises(DataError, match="invalid JSON") as info:
        load(tmp_path, on_bad_line="skip")  # a broken file is never skipped
    bad = text.splitlines().index("        4") + 2  # 1-based, and the error is seen at the next value
    assert f"{tmp_path / 'Office.inter.json'}:{bad}:" in str(info.value)


@pytest.mark.parametrize("history, found", [("0 1 2", "'0 1 2'"), ([0, "1", 2], "'1'"), ([], "'an empty list'"),
                                            ([0, -1], "-1"), ([True, 1], "True"), ({"0": 1}, "{'0': 1}")])
def test_bad_history(tmp_path, history, found):
    inter = {"0": INTER["0"], "1": history, "2": INTER["2"]}
    write(tmp_path, inter=inter)
    with pytest.raises(BadLineError) as info:
        load(tmp_path)
    err, text = info.value, json.dumps(inter, indent=4)
    assert (err.path, err.lineno) == (str(tmp_path / "Office.inter.json"), line_of(text, '"1": '))
    assert "user '1': expected a non-empty list of item indices" in err.reason and found in err.reason
    assert err.text.startswith('{"1": ')
    raw, inter_frame, _ = load(tmp_path, on_bad_line="skip")
    assert inter_frame["user_id"].unique(maintain_order=True).to_list() == ["0", "2"]
    assert raw.dropped == {"bad_line:Office.inter.json": 1} and raw.file_rows["Office.inter.json"] == 2


def test_bad_item_record(tmp_path):
    items = ITEMS | {"3": {"title": ["Desk lamp"], "brand": "Lumo"}}
    write(tmp_path, items=items)
    with pytest.raises(BadLineError, match="item '3': field 'title' must be a string") as info:
        load(tmp_path)
    assert info.value.lineno == line_of(json.dumps(items, indent=4), '"3": ')
    raw, _, frame = load(tmp_path, on_bad_line="skip")
    assert "3" not in frame["item_id"].to_list() and raw.dropped == {"bad_line:Office.item.json": 1}


def test_missing_files(tmp_path):
    with pytest.raises(MissingFilesError) as info:
        load(tmp_path)
    message = str(info.value)
    assert f"{tmp_path}/Office.inter.json" in message and f"{tmp_path}/Office.item.json" in message


def split_targets(raw_dir: Path, out: Path, name: str) -> tuple[dict, dict[str, Any]]:
    params = Params(dataset=DatasetParams(source="lcrec", name=name, path=str(raw_dir)),
                    ingest=IngestParams(download=False), split=SplitParams(user_core=0, item_core=0))
    manifest = run_ingest(params, out / "interim")
    run_split(params, out / "interim", out / "processed", out / "data.json")
    processed = out / "processed"
    targets = (pl.read_parquet(processed / "examples.parquet").filter(pl.col("split") != "train")
               .join(pl.read_parquet(processed / "user_map.parquet"), on="user_idx")
               .join(pl.read_parquet(processed / "item_map.parquet").select("item_idx", "item_id"), on="item_idx"))
    got = {(u, str(s)): i for u, s, i in targets.select("user_id", "split", "item_id").iter_rows()}
    return got, manifest


def published(inter: dict[str, list[int]]) -> dict[tuple[str, str], str]:
    return {(u, split): str(h[k]) for u, h in inter.items() for split, k in (("valid", -2), ("test", -1))}


def test_leave_one_out_keeps_the_published_split(tmp_path):
    (tmp_path / "raw").mkdir()
    write(tmp_path / "raw")
    got, manifest = split_targets(tmp_path / "raw", tmp_path, "Office")
    assert got == published(INTER)
    assert manifest["items"] == 5 and manifest["metadata_items_without_interactions"] == 1


def test_real_office_data(shared, tmp_path):
    raw_dir = shared / "data" / "amazon-office-lcrec"
    got, manifest = split_targets(raw_dir, tmp_path, "Office")
    assert (manifest["users"], manifest["items"], manifest["interactions"]) == (4905, 2420, 53258)
    assert manifest["items_without_title"] == 3 and not manifest["dropped"]
    inter = json.loads((raw_dir / "Office.inter.json").read_text())
    assert got == published(inter)
