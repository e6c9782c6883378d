import numpy as np
import pytest

from distillrec.data.splitdata import SplitData
from distillrec.errors import DataError


@pytest.mark.parametrize("stride", [None, 7, 3, 1])
def test_training_windows_supervise_every_training_target_once(small_split, stride):
    data = SplitData.load(small_split)
    length = 8
    windows, users, ends, first = data.training_windows(length, stride)
    inputs, targets = windows[:, :-1], windows[:, 1:]
    column = np.arange(length)[None]
    supervised = (inputs > 0) & (targets > 0) & (column >= first[:, None])
    positions = (ends[:, None] - length + column)[supervised]
    owners = np.broadcast_to(users[:, None], supervised.shape)[supervised]
    keys = set(zip(owners.tolist(), positions.tolist()))
    assert len(keys) == supervised.sum()  # no target twice
    ex = data.examples.filter(data.examples["split"] == "train")
    assert keys == set(zip(ex["user_idx"].to_list(), ex["position"].to_list()))  # every one once
    # the supervised item is the example's target item
    items = data.items[data.offsets[owners - 1] + positions]
    assert np.array_equal(items, targets[supervised])
    # with overlap, every supervised target has at least length - stride items of context
    if stride:
        context = np.minimum(positions, column.repeat(len(windows), 0)[supervised] + 1)
        assert (context >= np.minimum(positions, length - stride)).all()


def test_histories_are_left_padded_slices(small_split):
    data = SplitData.load(small_split)
    seq = data.items[data.offsets[0]:data.offsets[1]]
    hist = data.histories(np.array([1, 1]), np.array([2, len(seq)]), 4)
    assert hist[0].tolist() == [0, 0, *seq[:2]]
    assert hist[1].tolist() == seq[-4:].tolist()


def test_missing_split_files_are_named(tmp_path):
    with pytest.raises(DataError, match="lacks sequences.parquet.*run the `split` stage first"):
        SplitData.load(tmp_path)
