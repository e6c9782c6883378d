import numpy as np
import polars as pl
import yaml

from distillrec.data.sources import synthetic
from distillrec.params import IngestParams
from tests.conftest import REPO, small_params


def _load(**cfg):
    params = small_params(**cfg)
    raw = synthetic.load(params.dataset, IngestParams(), params.dataset.raw_dir, None)
    return raw.interactions.collect(), raw.items.collect()


def test_same_seed_same_data_other_seed_other_data():
    a, items_a = _load()
    b, items_b = _load()
    assert a.equals(b) and items_a.equals(items_b)
    c, _ = _load(seed=1)
    assert not a.equals(c)


def test_shape_and_text():
    inter, items = _load()
    lengths = inter.group_by("user_id").len()["len"]
    assert inter["user_id"].n_unique() == 120
    assert lengths.min() >= 6 and lengths.max() <= 20
    assert items["title"].null_count() == 0 and items["title"].n_unique() == items.height
    assert inter["rating"].is_between(1, 5).all()
    # reviews talk about the item they review: its product word is in the text
    joined = inter.join(items, on="item_id")
    product = joined["categories"].list.get(1)
    assert all(p in text for p, text in zip(product, joined["review_text"]))


def test_popularity_is_skewed_and_sequences_are_predictable():
    inter, _ = _load(n_users=400)
    counts = inter["item_id"].value_counts()["count"].sort(descending=True).to_numpy()
    assert counts[: len(counts) // 10].sum() > 0.25 * counts.sum()  # Zipf-like head
    # a bigram model (previous item -> most frequent next item) beats global popularity by far
    pairs = inter.with_columns(prev=pl.col("item_id").shift(1).over("user_id")).drop_nulls("prev")
    half = pairs["user_id"].unique().sort()[:200]
    train, test = pairs.filter(pl.col("user_id").is_in(half.implode())), pairs.filter(~pl.col("user_id").is_in(half.implode()))
    best_next = (train.group_by("prev", "item_id").len().sort("len", descending=True)
                 .unique("prev", keep="first"))
    bigram_hit = test.join(best_next.rename({"item_id": "guess"}), on="prev", how="left")
    bigram_acc = float((bigram_hit["guess"] == bigram_hit["item_id"]).mean())
    top = train["item_id"].value_counts().sort("count", descending=True)["item_id"][0]
    pop_acc = float((test["item_id"] == top).mean())
    assert bigram_acc > 3 * pop_acc and bigram_acc > 0.15, (bigram_acc, pop_acc)
    assert np.isfinite(bigram_acc)


def test_the_text_says_what_comes_next_and_most_items_are_rare():
    """The default's point: the next item usually goes with the previous one by its title's kind
    (and brand), and most items are seen too rarely for an ID embedding to learn that."""
    default = yaml.safe_load((REPO / "params.yaml").read_text())["dataset"]["synthetic"]
    params = small_params(**default)
    raw = synthetic.load(params.dataset, IngestParams(), params.dataset.raw_dir, None)
    inter, items = raw.interactions.collect(), raw.items.collect()
    kind = dict(zip(items["item_id"], items["categories"].list.get(1)))
    hobby = dict(zip(items["item_id"], items["categories"].list.get(0)))
    brand = dict(zip(items["item_id"], items["brand"]))
    goes_with = {(h, pair[i]): {pair[1 - i], pairs[(k + 1) % 3][0]}
                 for h, pairs in synthetic.HOBBIES for k, pair in enumerate(pairs) for i in (0, 1)}
    pairs = inter.with_columns(prev=pl.col("item_id").shift(1).over("user_id")).drop_nulls("prev")
    follows = [kind[n] in goes_with[(hobby[p], kind[p])] and hobby[n] == hobby[p]
               for p, n in zip(pairs["prev"], pairs["item_id"])]
    same_brand = [brand[p] == brand[n] for p, n in zip(pairs["prev"], pairs["item_id"])]
    # p_successor = 0.6 of the moves, plus chance from the hobby and popularity moves
    assert 0.6 < np.mean(follows) < 0.75 and np.mean(same_brand) > 0.5
    counts = inter["item_id"].value_counts()["count"].to_numpy()
    assert (counts < 5).mean() > 0.5   # the long tail
    title = dict(zip(items["item_id"], items["title"]))
    assert all(kind[i] in title[i] and brand[i] in title[i] for i in items["item_id"][:50])   # the text says it
    # the oracle (what tests build perfect teachers from) is this generator's transition matrix
    probs = synthetic.next_item_probabilities(params.dataset.synthetic)
    assert probs.shape == (default["n_items"],) * 2 and np.allclose(probs.sum(axis=1), 1.0)
