import math

import pytest
import torch

from distillrec.train.metrics import metric_per_example, metrics_from_ranks, target_ranks
from distillrec.train.ranking import Scorer, chunked_ranks, chunked_topk

MIN = torch.finfo(torch.float32).min


def scores(*rows):
    return torch.tensor([[MIN, *row] for row in rows])


def test_rank_counts_ties_against_the_model():
    s = scores([0.1, 0.5, 0.5, 0.9], [1.0, 1.0, 1.0, 1.0])
    ranks = target_ranks(s, torch.tensor([2, 1]))
    # item 2 (0.5) ties item 3 and loses to item 4 → rank 3; a constant scorer ranks last
    assert ranks.tolist() == [3, 4]


def test_padding_column_never_competes_and_nan_ranks_last():
    s = torch.tensor([[1e9, 0.2, 0.1], [0.0, float("nan"), 0.3]])
    assert target_ranks(s, torch.tensor([1, 1])).tolist() == [1, 2]


def test_history_exclusion_removes_competitors_but_never_the_target():
    s = scores([0.9, 0.8, 0.7, 0.1])
    exclude = torch.zeros(1, 5, dtype=torch.bool)
    exclude[0, [1, 2, 3]] = True  # items 1, 2 and the target 3 are "history"
    assert target_ranks(s, torch.tensor([3])).item() == 3
    assert target_ranks(s, torch.tensor([3]), exclude).item() == 1


def test_metric_values_by_hand():
    ranks = torch.tensor([1, 2, 4, 11])
    m = metrics_from_ranks(ranks, [1, 3, 10])
    assert m["hr@1"] == pytest.approx(0.25)
    assert m["hr@3"] == pytest.approx(0.5)
    assert m["ndcg@3"] == pytest.approx((1 + 1 / math.log2(3)) / 4)
    assert m["mrr@10"] == pytest.approx((1 + 1 / 2 + 1 / 4) / 4)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(5)) / 4)


def test_k_larger_than_catalogue_hits_everything():
    s = scores([0.3, 0.2, 0.1])
    ranks = target_ranks(s, torch.tensor([3]))
    assert ranks.item() == 3
    assert metrics_from_ranks(ranks, [50])["hr@50"] == 1.0
    assert metric_per_example(ranks, "ndcg@50").item() == pytest.approx(0.5)


@pytest.mark.parametrize("chunk", [1, 3, 7, 50])
def test_ranking_a_slice_at_a_time_equals_ranking_all_at_once(chunk):
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (40, 21), generator=g).float()  # many ties
    scores[:, 0] = torch.finfo(torch.float32).min
    scores[3, 7] = float("nan")
    targets = torch.randint(1, 21, (40,), generator=g)
    targets[3] = 7                                              # a NaN target ranks last
    row = torch.randint(0, 40, (60,), generator=g)
    item = torch.randint(1, 21, (60,), generator=g)
    exclude = torch.zeros_like(scores, dtype=torch.bool)
    exclude[row, item] = True
    scorer = Scorer(lambda history: scores, lambda every, start, stop: every[:, start:stop], 20)
    expected = target_ranks(scores, targets, exclude)
    assert expected[3] == 20
    assert torch.equal(chunked_ranks(scorer, scorer.encode(None), targets, (row, item), chunk), expected)
    assert torch.equal(chunked_ranks(scorer, scorer.encode(None), targets, None, chunk), target_ranks(scores, targets))


@pytest.mark.parametrize("chunk", [1, 4, 7, 100])
def test_log_softmax_top_k_a_slice_at_a_time_equals_the_whole_catalogue(chunk):
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(30, 41, generator=g) * 3     # distinct scores: one right order
    scorer = Scorer(lambda history: scores, lambda every, start, stop: every[:, start:stop], 40)
    items, top, total = chunked_topk(scorer, scorer.encode(None), 5, chunk)
    whole = torch.log_softmax(scores[:, 1:], dim=1).topk(5, dim=1)   # padding (item 0) never listed
    assert torch.equal(items, whole.indices + 1)
    assert torch.allclose(top - total[:, None], whole.values, atol=1e-5)
    assert torch.equal(scores, torch.randn(30, 41, generator=g.manual_seed(1)) * 3)   # nothing written to it
