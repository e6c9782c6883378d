"""Test metrics within buckets of users: tail/head target items, short/long histories."""

import itertools
import json
import math

import numpy as np
import polars as pl
import pytest
from scipy import stats

from distillrec.data.splitdata import SplitData
from distillrec.errors import ParamsError
from distillrec.evaluate.buckets import assign_buckets, bucket_metrics, compare_buckets, tail_items
from distillrec.evaluate.compare import holm, paired_comparison, sign_flip_p
from distillrec.evaluate.evaluation import Evaluator
from distillrec.evaluate.headline import neg_log10
from distillrec.evaluate.report import write_reports
from distillrec.params import BucketParams, EvaluateParams, parse_params

# Train part = all but the last two items (valid, test). Training counts of items 1..10:
# 1: 5, 2: 4, 3: 3, 4: 2, 5: 1, 6: 1, 7: 1, 8: 0, 9: 0, 10: 0.
SEQUENCES = {1: [1, 1, 1, 2, 9, 5], 2: [2, 2, 3, 8, 4], 3: [1, 3, 4, 7, 6], 4: [1, 2, 3, 4, 5, 6, 7, 7, 10]}
N_ITEMS = 10
COUNTS = np.array([0, 5, 4, 3, 2, 1, 1, 1, 0, 0, 0])
# test targets (user: item, position): 1: (5, 5), 2: (4, 4), 3: (6, 4), 4: (10, 8)


def _examples() -> pl.DataFrame:
    rows = []
    for user, items in SEQUENCES.items():
        n = len(items)
        for position in range(1, n):
            split = "test" if position == n - 1 else "valid" if position == n - 2 else "train"
            rows.append({"user_idx": user, "position": position, "split": split, "item_idx": items[position]})
    return pl.DataFrame(rows)


def tiny_split() -> SplitData:
    lengths = [len(s) for s in SEQUENCES.values()]
    return SplitData(items=np.concatenate(list(SEQUENCES.values())).astype(np.int64),
                     offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                     item_map=pl.DataFrame({"item_idx": range(1, N_ITEMS + 1),
                                            "item_id": [f"i{i}" for i in range(1, N_ITEMS + 1)]}),
                     user_map=pl.DataFrame({"user_idx": list(SEQUENCES), "user_id": [f"u{u}" for u in SEQUENCES]}),
                     examples=_examples())


@pytest.fixture
def processed(tmp_path):
    """The tiny split written as data/processed, for the Evaluator."""
    data = tiny_split()
    folder = tmp_path / "processed"
    folder.mkdir()
    pl.DataFrame({"user_idx": list(SEQUENCES), "items": list(SEQUENCES.values())}).write_parquet(
        folder / "sequences.parquet")
    data.examples.write_parquet(folder / "examples.parquet")
    data.item_map.write_parquet(folder / "item_map.parquet")
    data.user_map.write_parquet(folder / "user_map.parquet")
    return folder


def members(mask: np.ndarray) -> set[int]:
    return set(np.flatnonzero(mask).tolist())


def test_training_counts_of_the_tiny_split():
    assert tiny_split().training_counts().tolist() == COUNTS.tolist()


@pytest.mark.parametrize(("share", "tail"), [
    (0.8, {3, 4, 5, 6, 7, 8, 9, 10}),  # the 8 least frequent: 0-count items first, then 5, 6, 7, then 4, 3
    (0.5, {5, 6, 8, 9, 10}),           # the tie at count 1 (items 5, 6, 7) is cut by item_idx: 7 is head
    (0.2, {8, 9, 10}),                 # 2 items by rank, but every unseen item is tail
    (0.1, {8, 9, 10}),
])
def test_tail_items_rank_by_count_then_item_and_unseen_items_are_tail(share, tail):
    mask = tail_items(COUNTS, share)
    assert not mask[0]  # padding
    assert members(mask) == tail


def test_tail_share_boundary_is_not_lost_to_float_rounding():
    counts = np.concatenate([[0], np.arange(1, 101)])  # 100 items, distinct counts
    assert tail_items(counts, 0.29).sum() == 29  # 0.29 * 100 = 28.999999999999996 in floating point


def test_assign_buckets_tail_head_short_long():
    data = tiny_split()
    users = data.targets("test")[0]
    assert users.tolist() == [1, 2, 3, 4]
    masks, info = assign_buckets(data, BucketParams(tail_share=0.5, short_history=4))
    # targets 5, 4, 6, 10: item 4 (count 2) is head, 5 and 6 (count 1, ranked before 7) and 10 (unseen) tail
    assert masks["tail"].tolist() == [True, False, True, True]
    assert masks["head"].tolist() == [False, True, False, False]
    # positions 5, 4, 4, 8
    assert masks["short"].tolist() == [False, True, True, False]
    assert masks["long"].tolist() == [True, False, False, True]
    assert info == {"users": {"tail": 3, "head": 1, "short": 2, "long": 2}, "tail_share": 0.5, "tail_items": 5,
                    "tail_max_count": 1, "short_history": 4}
    masks, info = assign_buckets(data, BucketParams())  # defaults: 0.8, 5
    assert masks["tail"].tolist() == [True, True, True, True]
    assert masks["short"].tolist() == [True, True, True, False]
    assert info["tail_max_count"] == 3 and info["users"]["head"] == 0


def _hand(ranks, k, metric):
    value = {"hr": lambda r: 1.0, "ndcg": lambda r: 1 / math.log2(r + 1), "mrr": lambda r: 1 / r}[metric]
    return [value(r) if r <= k else 0.0 for r in ranks]


def test_bucket_metrics_equal_hand_computed_means_over_users_and_runs():
    masks = {"a": np.array([True, True, False, False]), "b": np.array([False, False, True, True]),
             "none": np.zeros(4, bool)}
    runs = [np.array([1, 3, 11, 2]), np.array([2, 3, 1, 50])]
    table = bucket_metrics(runs, masks, ["hr@2", "ndcg@3", "mrr@10"])
    for bucket, mask in list(masks.items())[:2]:
        assert table[bucket]["users"] == 2
        for name in ("hr@2", "ndcg@3", "mrr@10"):
            metric, k = name.split("@")
            per_run = [np.mean(np.array(_hand(r, int(k), metric))[mask]) for r in runs]
            assert table[bucket][name] == pytest.approx(np.mean(per_run))
    assert table["a"]["hr@2"] == pytest.approx((1 + 0 + 1 + 0) / 4)
    assert table["b"]["mrr@10"] == pytest.approx((0 + 1 / 2 + 1 + 0) / 4)
    assert table["none"] == {"users": 0, "hr@2": None, "ndcg@3": None, "mrr@10": None}
    # a ranker listing only its top 5: metrics@k beyond 5 are undefined
    listed = bucket_metrics(runs, masks, ["hr@2", "mrr@10"], listed=5)
    assert listed["a"]["hr@2"] == table["a"]["hr@2"] and listed["a"]["mrr@10"] is None


def test_paired_comparison_per_bucket_is_scipys_ttest_on_the_masked_users():
    rng = np.random.default_rng(0)
    base = [rng.integers(1, 30, 40), rng.integers(1, 30, 40)]
    other = [rng.integers(1, 20, 40), rng.integers(1, 20, 40)]
    mask = rng.random(40) < 0.5
    result = paired_comparison(base, other, "ndcg@10", mask)

    def per_user(ranks):
        return np.mean([[1 / math.log2(r + 1) if r <= 10 else 0.0 for r in run] for run in ranks], axis=0)[mask]

    b, o = per_user(base), per_user(other)
    assert result["p_value"] == pytest.approx(stats.ttest_rel(o, b).pvalue)
    assert result["gain"] == pytest.approx(o.mean() / b.mean() - 1)
    # the 95 % interval: scipy's paired t interval of the mean difference, relative to the baseline mean
    low, high = stats.ttest_rel(o, b).confidence_interval(0.95)
    assert (result["ci_low"], result["ci_high"]) == pytest.approx((low / b.mean(), high / b.mean()))
    assert result["ci_low"] < result["gain"] < result["ci_high"]
    assert paired_comparison(base, other, "ndcg@10", np.zeros(40, bool)) == {
        "metric": "ndcg@10", "gain": None, "p_value": None, "ci_low": None, "ci_high": None}
    # no mask = every user, as before
    assert paired_comparison(base, other, "ndcg@10")["p_value"] == pytest.approx(
        paired_comparison(base, other, "ndcg@10", np.ones(40, bool))["p_value"])
    per_bucket = compare_buckets(base, other, "ndcg@10", {"x": mask, "y": ~mask})
    assert per_bucket["x"] == {"gain": result["gain"], "p": result["p_value"]}


def _evaluator(processed, **cfg) -> Evaluator:
    """An Evaluator on the tiny split with rows of known per-user test ranks (users 1..4)."""
    evaluator = Evaluator(processed, EvaluateParams(ks=[1, 5, 10], buckets=BucketParams(tail_share=0.5,
                                                                                        short_history=4), **cfg),
                          "cpu")
    miss = {"parameters": 0, "ms_per_user": 1.0, "users_per_second": 1.0}
    # teacher lists K = 5: users 2 and 4 have their target beyond the list (null rank)
    evaluator.ranks["teacher-t"] = pl.Series("teacher-t", [1, None, 3, None])
    evaluator.listed["teacher-t"] = 5
    evaluator.table["teacher-t"] = {"test": {}, "cost": miss | {"top_k": 5}}
    runs = {"baseline": [[2, 1, 8, 20], [4, 1, 6, 11]], "kd": [[1, 2, 1, 3], [1, 1, 2, 7]]}
    for name, per_run in runs.items():
        for seed, ranks in enumerate(per_run):
            evaluator.ranks[f"{name}/seed{seed}"] = np.array(ranks)
        evaluator.table[name] = {"test": {}, "cost": miss, "runs": {f"seed{s}": {} for s in range(len(per_run))}}
    return evaluator


def test_evaluator_buckets_teacher_nulls_are_misses_and_seeds_are_averaged(processed):
    report = _evaluator(processed).by_bucket("baseline", "ndcg@10")
    assert report.info["users"] == {"tail": 3, "head": 1, "short": 2, "long": 2}
    teacher = report.rows["teacher-t"]
    # tail = users 1, 3, 4 with ranks 1, 3, null (a miss)
    assert teacher["tail"]["hr@5"] == pytest.approx(2 / 3)
    assert teacher["tail"]["mrr@5"] == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert teacher["head"]["hr@1"] == 0.0  # user 2: null
    assert teacher["tail"]["ndcg@10"] is None and teacher["tail"]["hr@10"] is None  # k > K: undefined
    assert "gain" not in teacher["tail"]  # its top 5 cannot be compared on ndcg@10
    kd, base = report.rows["kd"], report.rows["baseline"]
    # short = users 2, 3: kd ranks (2, 1) and (1, 2); baseline (1, 8) and (1, 6)
    assert kd["short"]["hr@1"] == pytest.approx((0 + 1 + 1 + 0) / 4)
    assert base["short"]["ndcg@5"] == pytest.approx((1 + 0 + 1 + 0) / 4)
    assert base["long"]["users"] == 2 and "gain" not in base["long"]
    mask = np.array([True, False, False, True])  # long: users 1 and 4
    expected = paired_comparison([np.array([2, 1, 8, 20]), np.array([4, 1, 6, 11])],
                                 [np.array([1, 2, 1, 3]), np.array([1, 1, 2, 7])], "ndcg@10", mask)
    assert kd["long"]["gain"] == pytest.approx(expected["gain"]) and kd["long"]["p"] == expected["p_value"]
    assert report.headline("kd")["long"] == {"ndcg@10": kd["long"]["ndcg@10"], "gain": kd["long"]["gain"],
                                             "p": kd["long"]["p"], "p_holm": kd["long"]["p"]}  # one row tested
    assert report.headline("teacher-t")["tail"] == {"ndcg@10": None}


def test_compare_metric_outside_ks_is_still_reported(processed):
    report = _evaluator(processed).by_bucket("baseline", "mrr@3")
    assert report.metrics[-1] == "mrr@3" and report.rows["kd"]["tail"]["mrr@3"] is not None


def test_write_reports_adds_compact_buckets_to_details_and_full_ones_to_csv_and_report(processed, tmp_path):
    evaluator = _evaluator(processed)
    for row in evaluator.table.values():
        row["test"] = {f"{m}@{k}": 0.5 for k in (1, 5, 10) for m in ("hr", "ndcg", "mrr")}
    report = evaluator.by_bucket("baseline", "ndcg@10")
    write_reports(evaluator.table, evaluator.rank_table(), [1, 5, 10], "protocol", tmp_path / "metrics", report)
    evaluation = json.loads((tmp_path / "metrics" / "details.json").read_text())
    assert set(evaluation) == {"teacher-t", "baseline", "kd", "buckets"}
    assert evaluation["buckets"]["users"] == {"tail": 3, "head": 1, "short": 2, "long": 2}
    assert evaluation["buckets"]["tail_share"] == 0.5 and evaluation["buckets"]["short_history"] == 4
    assert set(evaluation["kd"]["buckets"]) == {"tail", "head", "short", "long"}
    assert set(evaluation["kd"]["buckets"]["tail"]) == {"ndcg@10", "gain", "p", "p_holm"}
    assert set(evaluation["baseline"]["buckets"]["head"]) == {"ndcg@10"}
    csv = pl.read_csv(tmp_path / "metrics" / "buckets.csv")
    assert csv.columns == ["row", "bucket", "users", *[f"{m}@{k}" for k in (1, 5, 10) for m in ("hr", "ndcg", "mrr")],
                           "gain", "p", "p_holm"]
    assert csv.height == 3 * 4
    kd_long = csv.filter((pl.col("row") == "kd") & (pl.col("bucket") == "long")).row(0, named=True)
    assert kd_long["users"] == 2 and kd_long["ndcg@10"] == pytest.approx(report.rows["kd"]["long"]["ndcg@10"])
    assert kd_long["gain"] == pytest.approx(report.rows["kd"]["long"]["gain"])
    assert csv.filter(pl.col("row") == "teacher-t")["ndcg@10"].null_count() == 4
    md = (tmp_path / "metrics" / "report.md").read_text()
    assert "## By item popularity and history length (test, ndcg@10)" in md
    assert "| row | tail (n=3) | gain | p (Holm) | head (n=1) | gain | p (Holm) |" in md
    assert "| kd | long | 2 |" in md


def _written(processed, folder, valid=None, rows=None):
    """Reports of the tiny evaluator; `valid` (row -> validation value) and `rows` (extra student
    rows: name -> per-seed test ranks) set up row auto's choice."""
    evaluator = _evaluator(processed)
    for name, per_run in (rows or {}).items():
        for seed, ranks in enumerate(per_run):
            evaluator.ranks[f"{name}/seed{seed}"] = np.array(ranks)
        evaluator.table[name] = {"cost": evaluator.table["kd"]["cost"],
                                 "runs": {f"seed{s}": {} for s in range(len(per_run))}}
    valid = {"kd": 0.5, "baseline": 0.4} | (valid or {})
    for name, row in evaluator.table.items():
        value = {"kd": 0.6, "baseline": 0.4}.get(name, 0.3)
        row["test"] = {f"{m}@{k}": value for k in (1, 5, 10) for m in ("hr", "ndcg", "mrr")}
        row["valid"] = {f"{m}@{k}": valid.get(name, 0.2) for k in (1, 5, 10) for m in ("hr", "ndcg", "mrr")}
    evaluator.compare("baseline", "ndcg@10")
    report = evaluator.by_bucket("baseline", "ndcg@10")
    evaluator.add_auto(["kd", *(rows or {})], "ndcg@10", report)
    write_reports(evaluator.table, evaluator.rank_table(), [1, 5, 10], "protocol", folder, report,
                  teachers=["teacher-t"])
    return evaluator


def test_headline_metrics_are_small_and_share_one_set_of_keys(processed, tmp_path):
    evaluator = _written(processed, tmp_path / "metrics")
    story = json.loads((tmp_path / "metrics" / "eval.json").read_text())
    kd = evaluator.table["kd"]["vs_baseline"]
    versus = {"gain": round(kd["gain"], 4), "p": kd["p_value"], "p_holm": kd["p_holm"],
              "neg_log10_p": round(-math.log10(kd["p_value"]), 2)}
    assert story == {"best": "kd", "ndcg@10": 0.6, **versus,
                     "tail_gain": round(evaluator.by_bucket("baseline", "ndcg@10").rows["kd"]["tail"]["gain"], 4),
                     "teacher": "teacher-t"}
    rows = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "metrics" / "rows").glob("*.json")}
    assert set(rows) == {"teacher-t", "baseline", "kd", "auto"}
    keys = {"hr@10", "ndcg@10", "valid_ndcg@10", "gain", "p", "p_holm", "neg_log10_p", "params"}
    assert all(set(row) == keys for row in rows.values())  # one shared set of columns in `dvc metrics show`
    assert rows["kd"]["ndcg@10"] == 0.6 and rows["kd"]["gain"] == round(kd["gain"], 4)
    assert rows["kd"]["valid_ndcg@10"] == 0.5 and rows["auto"] == rows["kd"]
    assert set(story) - keys == {"best", "tail_gain", "teacher"}  # few columns in all
    assert rows["baseline"]["gain"] is None and rows["kd"]["params"] == 0  # no timings: they differ every run


def test_auto_is_chosen_on_validation_and_never_on_test(processed, tmp_path):
    """kd is best on test (0.6) but kd2 on validation (0.55 > 0.5): auto, the story and the report
    take kd2; auto is not a second hypothesis in Holm's family."""
    evaluator = _written(processed, tmp_path / "metrics", valid={"kd2": 0.55},
                         rows={"kd2": [[1, 3, 2, 9], [2, 1, 3, 9]]})
    auto = evaluator.table["auto"]
    assert auto["selection"] == {"chosen": "kd2", "metric": "valid ndcg@10",
                                 "candidates": {"kd": 0.5, "kd2": 0.55}}
    assert auto["vs_baseline"] == evaluator.table["kd2"]["vs_baseline"]
    story = json.loads((tmp_path / "metrics" / "eval.json").read_text())
    assert story["best"] == "kd2" and story["ndcg@10"] == 0.3
    tested = {name: row["vs_baseline"]["p_value"] for name, row in evaluator.table.items()
              if "vs_baseline" in row and name != "auto"}
    assert {name: evaluator.table[name]["vs_baseline"]["p_holm"] for name in tested} == holm(tested)
    assert set(tested) == {"kd", "kd2"}  # the teacher's top 5 is not compared on ndcg@10
    md = (tmp_path / "metrics" / "report.md").read_text()
    assert "| auto → kd2 | 0, 1 |" in md
    assert "Row `auto` is **kd2**: the best valid ndcg@10 (mean over seeds) among kd2 0.5500, kd 0.5000" in md
    # a tie goes to the first declared candidate
    evaluator.table["kd2"]["valid"]["ndcg@10"] = 0.5
    assert evaluator.add_auto(["kd", "kd2"], "ndcg@10") == "kd"
    evaluator.table["kd2"]["valid"].pop("ndcg@10")
    with pytest.raises(ValueError, match=r"auto: rows \['kd2'\] have no validation ndcg@10"):
        evaluator.add_auto(["kd", "kd2"], "ndcg@10")


def test_holm_adjusts_in_step_down_order_and_skips_untested_rows():
    assert holm({"a": 0.01, "b": 0.04, "c": None, "d": 0.03}) == pytest.approx(
        {"a": 0.03, "b": 0.06, "c": None, "d": 0.06})  # b: max(0.04 x 1, d's 0.03 x 2)
    assert holm({"a": 0.6, "b": 0.9}) == {"a": 1.0, "b": 1.0}  # capped at 1
    assert holm({}) == {}


def test_sign_flip_p_matches_exact_enumeration_and_is_seeded():
    diff = np.array([0.0, 0.5, 0.0, 0.3, -0.1, 0.4, 0.0, 0.2, 0.25, -0.05])
    moved = diff[diff != 0]
    flips = np.array(list(itertools.product([1, -1], repeat=len(moved))))
    null = np.abs((flips * moved).mean(1))
    exact = np.mean(null >= abs(moved.mean()) - 1e-12)
    assert sign_flip_p(diff, 9999) == pytest.approx(exact)  # scipy enumerates 2^8 < 9999 flips exactly
    rng = np.random.default_rng(0)
    big = np.where(rng.random(400) < 0.3, rng.normal(0.03, 0.2, 400), 0.0)
    assert sign_flip_p(big, 999) == sign_flip_p(big, 999)  # a fixed generator: the same p every run
    assert abs(sign_flip_p(big, 4999) - stats.ttest_1samp(big, 0).pvalue) < 0.03
    assert sign_flip_p(np.zeros(5), 99) == 1.0


def test_neg_log10_p_survives_dvc_rounding():
    assert neg_log10(3e-13) == 12.52 and neg_log10(2e-10) == 9.7 and neg_log10(None) is None
    assert neg_log10(0.0) == 300.0 and neg_log10(1.0) == 0.0


def test_figures_are_pngs_linked_from_the_report_and_identical_on_rewrite(processed, tmp_path):
    _written(processed, tmp_path / "a")
    _written(processed, tmp_path / "b")
    names = ["gain.png", "ndcg_at_k.png", "buckets.png", "curves.png"]
    for name in names:
        data = (tmp_path / "a" / "figures" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000
        assert data == (tmp_path / "b" / "figures" / name).read_bytes()
    md = (tmp_path / "a" / "report.md").read_text()
    assert all(f"](figures/{name})" in md for name in names)
    assert "## Headline (test, ndcg@10)" in md and "| kd | 0, 1 | 0.6000 | 0.6000 | 0.6000 | +" in md
    assert "| 1000 | 0 |" in md   # ms/user (1 user/s) and parameters close each row


@pytest.mark.parametrize(("raw", "fragment"), [
    ({"tail_share": 0.0}, "'evaluate.buckets.tail_share': Input should be greater than 0"),
    ({"tail_share": 1.0}, "'evaluate.buckets.tail_share': Input should be less than 1"),
    ({"tail_share": 1.5}, "'evaluate.buckets.tail_share': Input should be less than 1"),
    ({"tail_share": "most"}, "'evaluate.buckets.tail_share'"),
    ({"short_history": 0}, "'evaluate.buckets.short_history': Input should be greater than or equal to 1"),
    ({"short_history": 2.5}, "'evaluate.buckets.short_history'"),
    ({"edges": [5]}, "unknown key 'evaluate.buckets.edges'; allowed keys here: tail_share, short_history"),
])
def test_bucket_params_are_validated(raw, fragment):
    with pytest.raises(ParamsError) as error:
        parse_params({"evaluate": {"buckets": raw}})
    assert fragment in str(error.value)
