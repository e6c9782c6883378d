"""Deterministic synthetic dataset: the offline default, built to have learnable structure.

Signal a sequential recommender can exploit (and popularity cannot): every item has a few
likely successors in its own taste cluster, so the next item depends on the previous one.
Titles carry the cluster through category and brand words, reviews mention item features —
material for text-based teachers and explanation generation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from distillrec.data.sources.base import RawData
from distillrec.params import DatasetParams, IngestParams, SyntheticParams

CATEGORIES = [
    ("Outdoor", ["tent", "backpack", "lantern", "sleeping bag", "trekking pole", "water filter"]),
    ("Kitchen", ["skillet", "chef knife", "kettle", "blender", "cutting board", "spice rack"]),
    ("Gaming", ["controller", "headset", "keyboard", "mouse pad", "capture card", "racing wheel"]),
    ("Fitness", ["yoga mat", "kettlebell", "jump rope", "foam roller", "dumbbell", "resistance band"]),
    ("Garden", ["trowel", "hose", "planter", "pruner", "seed tray", "watering can"]),
    ("Office", ["desk lamp", "notebook", "monitor stand", "fountain pen", "stapler", "desk chair"]),
    ("Audio", ["speaker", "turntable", "amplifier", "earbuds", "microphone", "sound bar"]),
    ("Baby", ["stroller", "bottle", "high chair", "baby monitor", "play mat", "diaper bag"]),
    ("Pets", ["dog bed", "cat tree", "leash", "aquarium", "litter box", "chew toy"]),
    ("Travel", ["suitcase", "neck pillow", "packing cube", "travel adapter", "duffel", "passport wallet"]),
    ("Art", ["easel", "sketchbook", "watercolor set", "brush kit", "canvas", "pastel box"]),
    ("Tools", ["drill", "wrench set", "tape measure", "level", "sander", "tool box"]),
    ("Beauty", ["hair dryer", "face serum", "brush set", "nail kit", "mirror", "curling iron"]),
    ("Cycling", ["bike light", "helmet", "saddle", "pump", "bike lock", "jersey"]),
    ("Photo", ["tripod", "camera bag", "lens filter", "flash", "memory card", "gimbal"]),
    ("Music", ["guitar", "ukulele", "drum pad", "keyboard stand", "metronome", "capo"]),
]
BRAND_STEMS = ["Nord", "Terra", "Vela", "Orion", "Pico", "Luma", "Kestrel", "Atlas",
               "Brio", "Cobalt", "Delta", "Ember", "Fjord", "Gala", "Helix", "Iris"]
BRAND_SUFFIXES = ["works", "line", "craft", "gear"]
ADJECTIVES = ["compact", "deluxe", "rugged", "lightweight", "classic", "pro", "smart", "eco"]
MATERIALS = ["steel", "bamboo", "aluminium", "leather", "cotton", "silicone", "oak", "carbon"]
COLORS = ["black", "red", "green", "blue", "grey", "white", "orange", "teal"]
FEATURES = ["long battery life", "a sturdy grip", "easy cleaning", "a quiet motor", "fast setup",
            "a compact fold", "a durable finish", "a soft lining"]
POSITIVE = ["Love the {f}", "Great {p}", "Exactly what I needed", "Solid {m} build"]
NEGATIVE = ["Disappointed", "Not worth it", "The {f} failed", "Flimsy {p}"]


def _items(cfg: SyntheticParams, rng: np.random.Generator) -> tuple[pl.DataFrame, dict[str, np.ndarray]]:
    n = cfg.n_items
    cluster = np.sort(rng.integers(0, cfg.n_clusters, n))
    product = rng.integers(0, 6, n)
    brand = rng.integers(0, len(BRAND_SUFFIXES), n)
    adjective, material = rng.integers(0, len(ADJECTIVES), n), rng.integers(0, len(MATERIALS), n)
    color, feature = rng.integers(0, len(COLORS), n), rng.integers(0, len(FEATURES), n)
    attrs = dict(cluster=cluster, product=product, material=material, feature=feature)
    rows = []
    for i in range(n):
        category, products = CATEGORIES[cluster[i]]
        brand_name = BRAND_STEMS[cluster[i]] + BRAND_SUFFIXES[brand[i]]
        prod = products[product[i]]
        rows.append({
            "item_id": f"i{i:05d}",
            "title": f"{brand_name} {ADJECTIVES[adjective[i]]} {MATERIALS[material[i]]} {prod} {i % 97 + 1}",
            "description": f"A {COLORS[color[i]]} {MATERIALS[material[i]]} {prod} by {brand_name} "
                           f"with {FEATURES[feature[i]]}.",
            "categories": [category, prod],
            "brand": brand_name,
        })
    return pl.DataFrame(rows), attrs


def _popularity(cfg: SyntheticParams, rng: np.random.Generator) -> np.ndarray:
    weights = 1.0 / np.arange(1, cfg.n_items + 1) ** cfg.zipf_exponent
    return weights[rng.permutation(cfg.n_items)]


def _sample_rows(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One categorical draw per row of a [B, N] probability matrix (vectorised)."""
    cdf = np.cumsum(probs, axis=1)
    u = rng.random((probs.shape[0], 1)) * cdf[:, -1:]
    return np.minimum((cdf < u).sum(axis=1), probs.shape[1] - 1)


def _successors(cfg: SyntheticParams, cluster: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[N, S] each item's likely next items, drawn from its own cluster."""
    same = cluster[None, :] == np.arange(cfg.n_clusters)[:, None]
    return np.stack([rng.choice(np.flatnonzero(same[cluster[i]]), cfg.successors) for i in range(cfg.n_items)])


def next_item_probabilities(cfg: SyntheticParams) -> np.ndarray:
    """[N, N] the generator's P(next item | previous item), items numbered as in `i%05d` ids.

    The user's taste cluster is approximated by the previous item's cluster. This is what a
    perfect teacher would know; tests use it to build oracle teachers.
    """
    rng = np.random.default_rng(cfg.seed)
    _, attrs = _items(cfg, rng)
    pop = _popularity(cfg, rng)
    cluster, successors = attrs["cluster"], _successors(cfg, attrs["cluster"], rng)
    probs = np.zeros((cfg.n_items, cfg.n_items))
    np.add.at(probs, (np.repeat(np.arange(cfg.n_items), cfg.successors), successors.reshape(-1)),
              cfg.p_successor / cfg.successors)
    in_cluster = (cluster[:, None] == cluster[None, :]) * pop[None, :]
    probs += cfg.p_cluster * in_cluster / in_cluster.sum(axis=1, keepdims=True)
    return probs + (1 - cfg.p_successor - cfg.p_cluster) * pop[None, :] / pop.sum()


def _sequences(cfg: SyntheticParams, cluster: np.ndarray, pop: np.ndarray, successors: np.ndarray,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Simulate all users in parallel, one step at a time; returns (items [U, T], lengths)."""
    n, users, steps = cfg.n_items, cfg.n_users, cfg.max_length
    same = cluster[None, :] == np.arange(cfg.n_clusters)[:, None]            # [C, N]
    cluster_probs = same * pop[None, :]
    taste = np.stack([rng.choice(cfg.n_clusters, 2, replace=cfg.n_clusters < 2)
                      for _ in range(users)])                                # [U, 2]
    lengths = rng.integers(cfg.min_length, cfg.max_length + 1, users)
    seq = np.zeros((users, steps), dtype=np.int64)
    seq[:, 0] = _sample_rows(cluster_probs[taste[:, 0]], rng)
    for t in range(1, steps):
        mode = rng.random(users)
        own = taste[np.arange(users), rng.integers(0, 2, users)]
        by_cluster = _sample_rows(cluster_probs[own], rng)
        by_popularity = _sample_rows(np.broadcast_to(pop, (users, n)), rng)
        by_successor = successors[seq[:, t - 1], rng.integers(0, cfg.successors, users)]
        seq[:, t] = np.where(mode < cfg.p_successor, by_successor,
                             np.where(mode < cfg.p_successor + cfg.p_cluster, by_cluster, by_popularity))
    return seq, lengths


def _reviews(attrs: dict[str, np.ndarray], item: np.ndarray,
             rating: np.ndarray, rng: np.random.Generator) -> tuple[list[str], list[str]]:
    titles, texts = [], []
    pick = rng.integers(0, 4, len(item))
    for k, (i, r) in enumerate(zip(item.tolist(), rating.tolist())):
        _, products = CATEGORIES[attrs["cluster"][i]]
        words = dict(p=products[attrs["product"][i]], m=MATERIALS[attrs["material"][i]],
                     f=FEATURES[attrs["feature"][i]])
        titles.append((POSITIVE if r >= 4 else NEGATIVE)[pick[k]].format(**words))
        verdict = "works well" if r >= 4 else "let me down"
        texts.append(f"This {words['m']} {words['p']} has {words['f']} and {verdict}.")
    return titles, texts


def load(dataset: DatasetParams, ingest: IngestParams, raw_dir: Path, workdir: Path) -> RawData:
    """Generate the dataset from `dataset.synthetic`; reads no files."""
    cfg = dataset.synthetic
    rng = np.random.default_rng(cfg.seed)
    items, attrs = _items(cfg, rng)
    pop = _popularity(cfg, rng)
    successors = _successors(cfg, attrs["cluster"], rng)
    seq, lengths = _sequences(cfg, attrs["cluster"], pop, successors, rng)
    mask = np.arange(cfg.max_length)[None, :] < lengths[:, None]
    user = np.broadcast_to(np.arange(cfg.n_users)[:, None], seq.shape)[mask]
    item = seq[mask]
    start = 1_600_000_000 + rng.integers(0, 86_400 * 365, cfg.n_users)
    gaps = rng.integers(60, 86_400 * 3, seq.shape).cumsum(axis=1)
    timestamp = (start[:, None] + gaps)[mask]
    taste_match = rng.random(len(item)) < 0.8
    rating = np.where(taste_match, rng.integers(4, 6, len(item)), rng.integers(1, 4, len(item)))
    review_title, review_text = _reviews(attrs, item, rating, rng)
    interactions = pl.DataFrame({
        "user_id": [f"u{u:05d}" for u in user.tolist()],
        "item_id": items["item_id"].gather(item).to_list(),
        "timestamp": timestamp.astype(np.int64),
        "rating": rating.astype(np.float32),
        "review_title": review_title,
        "review_text": review_text,
    })
    return RawData(interactions=interactions.lazy(), items=items.lazy(), files=[],
                   file_rows={"<synthetic>": interactions.height})
