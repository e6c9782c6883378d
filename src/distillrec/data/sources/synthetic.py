"""Deterministic synthetic dataset: the offline default, built so that item text carries behaviour.

What a real text-rich catalogue has and an ID model cannot learn from few interactions:
* Every item is a product of one hobby (Camping, Coffee, ...) with a plain-English kind
  ("dome tent") and a brand line. Kinds come in real-world pairs, a product and what goes with
  it ("dome tent" -> "tent stakes", "camping stove" -> "fuel canister").
* The sequential signal follows from that text: each item has `successors` likely next items,
  drawn from the items whose kind goes with its kind, of its own brand where enough exist. A
  language model that knows which products go together, or simply reads the shared brand and
  kind words, predicts the next item from the titles alone.
* Popularity is Zipf-like, so most items are rare: their ID embeddings see a handful of
  interactions, while their text is as informative as a popular item's.
Reviews mention the item's kind, material and feature (material for explanation generation).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import polars as pl

from distillrec.data.sources.base import RawData
from distillrec.params import DatasetParams, IngestParams, SyntheticParams

HOBBIES = [  # (hobby, three (product, what goes with it) pairs)
    ("Camping", [("dome tent", "tent stakes"), ("sleeping bag", "sleeping pad"), ("camping stove", "fuel canister")]),
    ("Coffee", [("espresso machine", "milk frother"), ("coffee grinder", "coffee beans"), ("french press", "coffee mug")]),
    ("Gaming", [("game console", "wireless controller"), ("gaming mouse", "mouse pad"), ("gaming headset", "headset stand")]),
    ("Fitness", [("yoga mat", "yoga block"), ("dumbbell set", "weight bench"), ("running shoes", "sports socks")]),
    ("Garden", [("garden hose", "hose nozzle"), ("flower seeds", "seed tray"), ("lawn mower", "grass catcher")]),
    ("Office", [("fountain pen", "ink cartridge"), ("desk lamp", "light bulb"), ("laptop", "laptop stand")]),
    ("Audio", [("turntable", "vinyl record"), ("amplifier", "bookshelf speakers"), ("microphone", "pop filter")]),
    ("Baby", [("baby bottle", "bottle brush"), ("stroller", "stroller rain cover"), ("diapers", "baby wipes")]),
    ("Pets", [("dog leash", "dog collar"), ("aquarium", "fish food"), ("cat litter box", "cat litter")]),
    ("Travel", [("suitcase", "luggage tag"), ("neck pillow", "sleep mask"), ("travel adapter", "power bank")]),
    ("Art", [("watercolor paints", "watercolor paper"), ("easel", "canvas"), ("sketchbook", "graphite pencils")]),
    ("Tools", [("cordless drill", "drill bits"), ("circular saw", "saw blade"), ("tape measure", "carpenter pencil")]),
    ("Beauty", [("hair dryer", "heat protectant spray"), ("nail polish", "nail polish remover"), ("face cleanser", "moisturizer")]),
    ("Cycling", [("road bike", "bike helmet"), ("bike pump", "inner tube"), ("bike light", "bike lock")]),
    ("Photo", [("mirrorless camera", "camera lens"), ("tripod", "remote shutter"), ("camera bag", "memory card")]),
    ("Music", [("acoustic guitar", "guitar strings"), ("digital piano", "piano bench"), ("drum kit", "drumsticks")]),
]
KINDS = [[kind for pair in pairs for kind in pair] for _, pairs in HOBBIES]  # kind k: pair k // 2, role k % 2
GOES_WITH = [[k ^ 1, (k // 2 * 2 + 2) % 6] for k in range(6)]  # its pair partner and the next pair's product
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
    attrs = dict(cluster=cluster, product=product, brand=brand, material=material, feature=feature)
    rows = []
    for i in range(n):
        category = HOBBIES[cluster[i]][0]
        brand_name = BRAND_STEMS[cluster[i]] + BRAND_SUFFIXES[brand[i]]
        prod = KINDS[cluster[i]][product[i]]
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


@dataclasses.dataclass(frozen=True)
class Groups:
    """Each item's successor group, stored once per distinct group (memory O(N), not O(N²)).

    An item's group is what its text says goes with it: the items of its hobby whose kind goes
    with its kind, narrowed to its own brand when at least `successors` such items exist (in a
    catalogue too small for that, the widest of these sets that has them, down to the whole hobby).
    The successor move draws uniformly from the group.
    """

    of: np.ndarray       # [N] group of each item
    members: np.ndarray  # [G, L] item indices, padded with 0
    sizes: np.ndarray    # [G]

    def sample(self, previous: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One successor per previous item: `_sample_rows` on the dense uniform rows, without them."""
        group = self.of[previous]
        sizes = self.sizes[group]
        cdf = np.cumsum(np.where(np.arange(self.members.shape[1]) < sizes[:, None], 1.0 / sizes[:, None], 0.0), axis=1)
        u = rng.random((len(previous), 1)) * cdf[np.arange(len(previous)), sizes - 1][:, None]
        taken = np.minimum((cdf < u).sum(axis=1), sizes - 1)   # padding holds the total: never < u
        return self.members[group, taken]

    def dense(self) -> np.ndarray:
        """[N, N] the uniform rows (tests' oracle teachers; small catalogues only)."""
        probs = np.zeros((len(self.of), len(self.of)))
        for item, group in enumerate(self.of):
            probs[item, self.members[group, : self.sizes[group]]] = 1.0 / self.sizes[group]
        return probs


def _successors(cfg: SyntheticParams, attrs: dict[str, np.ndarray]) -> Groups:
    cluster, kind, brand = attrs["cluster"], attrs["product"], attrs["brand"]
    pools: dict[tuple[int, int, int], int] = {}
    members, of = [], np.zeros(cfg.n_items, dtype=np.int64)
    for i in range(cfg.n_items):
        key = (int(cluster[i]), int(kind[i]), int(brand[i]))   # items with one key share one group
        if key not in pools:
            pool = np.flatnonzero(cluster == cluster[i])
            goes_with = pool[np.isin(kind[pool], GOES_WITH[kind[i]])]
            pool = goes_with if len(goes_with) >= cfg.successors else pool
            own_brand = pool[brand[pool] == brand[i]]
            pools[key] = len(members)
            members.append(own_brand if len(own_brand) >= cfg.successors else pool)
        of[i] = pools[key]
    sizes = np.array([len(m) for m in members])
    padded = np.zeros((len(members), sizes.max()), dtype=np.int64)
    for g, m in enumerate(members):
        padded[g, : len(m)] = m
    return Groups(of, padded, sizes)


def next_item_probabilities(cfg: SyntheticParams) -> np.ndarray:
    """[N, N] the generator's P(next item | previous item), items numbered as in `i%05d` ids.

    The user's taste cluster is approximated by the previous item's cluster. This is what a
    perfect teacher would know; tests use it to build oracle teachers.
    """
    rng = np.random.default_rng(cfg.seed)
    _, attrs = _items(cfg, rng)
    pop = _popularity(cfg, rng)
    cluster = attrs["cluster"]
    in_cluster = (cluster[:, None] == cluster[None, :]) * pop[None, :]
    return (cfg.p_successor * _successors(cfg, attrs).dense()
            + cfg.p_cluster * in_cluster / in_cluster.sum(axis=1, keepdims=True)
            + (1 - cfg.p_successor - cfg.p_cluster) * pop[None, :] / pop.sum())


def _sequences(cfg: SyntheticParams, cluster: np.ndarray, pop: np.ndarray, successors: Groups,
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
        by_successor = successors.sample(seq[:, t - 1], rng)
        seq[:, t] = np.where(mode < cfg.p_successor, by_successor,
                             np.where(mode < cfg.p_successor + cfg.p_cluster, by_cluster, by_popularity))
    return seq, lengths


def _reviews(attrs: dict[str, np.ndarray], item: np.ndarray,
             rating: np.ndarray, rng: np.random.Generator) -> tuple[list[str], list[str]]:
    titles, texts = [], []
    pick = rng.integers(0, 4, len(item))
    for k, (i, r) in enumerate(zip(item.tolist(), rating.tolist())):
        words = dict(p=KINDS[attrs["cluster"][i]][attrs["product"][i]], m=MATERIALS[attrs["material"][i]],
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
    successors = _successors(cfg, attrs)
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
