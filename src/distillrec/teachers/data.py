"""What a teacher reads from the split stage: sequences, item text and review text."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from distillrec.data.splitdata import SplitData
from distillrec.errors import DataError

SENTENCE_END = re.compile(r"(?<=[.!?])\s")


def explanation_of(title: str | None, text: str | None) -> str | None:
    """POD-style explanation: the review's first sentence, else its title."""
    if text and text.strip():
        return SENTENCE_END.split(text.strip(), maxsplit=1)[0]
    if title and title.strip():
        return title.strip()
    return None


@dataclass(frozen=True)
class TeacherData:
    """The split plus text: `titles[i]` is item i's title (None when the source has none; i=0 pads)."""

    split: SplitData
    titles: list[str | None]
    explanations: pl.DataFrame   # user_idx, position, item_idx, split, explanation
    item_text: Path = Path("data/item_text")   # embed_items outputs, one folder per `embed` entry

    @classmethod
    def load(cls, processed: Path | str, item_text: Path | str = "data/item_text") -> TeacherData:
        processed = Path(processed)
        split = SplitData.load(processed)
        items = split.item_map.sort("item_idx")
        titles = [None] + [t if t and t.strip() else None for t in items["title"]]
        reviews_path = processed / "reviews.parquet"
        explanations = pl.DataFrame(schema={"user_idx": pl.Int32, "position": pl.Int32, "item_idx": pl.Int32,
                                            "split": split.examples["split"].dtype, "explanation": pl.String})
        if reviews_path.exists():
            reviews = pl.read_parquet(reviews_path)
            text = [explanation_of(t, r) for t, r in zip(reviews["review_title"], reviews["review_text"])]
            explanations = (reviews.select("user_idx", "position", "item_idx")
                            .with_columns(pl.Series("explanation", text, pl.String))
                            .drop_nulls("explanation")
                            .join(split.examples.select("user_idx", "position", "split"),
                                  on=["user_idx", "position"])
                            .select(explanations.columns).sort("user_idx", "position"))
        return cls(split, titles, explanations, Path(item_text))

    @property
    def n_items(self) -> int:
        return self.split.n_items

    def require_titles(self, family: str) -> list[str]:
        """Titles of items 0..N, or a DataError naming the items that lack one."""
        missing = [i for i, t in enumerate(self.titles) if i and t is None]
        if missing:
            ids = self.split.item_map.sort("item_idx")["item_id"].gather([i - 1 for i in missing[:5]]).to_list()
            raise DataError(f"item_map.parquet: {len(missing)} of {self.n_items} items have no title "
                            f"(e.g. item_id {', '.join(ids)}); the {family} teacher lists items by title, "
                            f"so use a dataset with item text (MovieLens, Amazon with metadata, synthetic)")
        return [""] + [t for t in self.titles[1:] if t is not None]

    def sequence(self, user_idx: int) -> np.ndarray:
        """All items of one user, in time order."""
        return self.split.items[self.split.offsets[user_idx - 1]:self.split.offsets[user_idx]]
