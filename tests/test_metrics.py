import math

import pytest
import torch

from distillrec.train.metrics import metric_per_example, metrics_from_ranks
from distillrec.data.splitdata import SplitData
from distillrec.train import ranking
from distillrec.evaluate.cost import inference_cost
from distillrec.train.ranking import (Scorer, chunked_ranks, chunked_topk, count_at_least, rank_split, table_scorer,
                                      top_k)

MIN = torch.finfo(torch.float32).min


def scores(*rows):
    return torch.tensor([[MIN, *row] for row in rows])


def matrix_scorer(scores: torch.Tensor) -> Scorer:
    return Scorer(lambda history: scores, lambda every, start, stop: every[:, start:stop], scores.shape[1] - 1)


def target_ranks(scores, targets, exclude=None, chunk=1 << 20):
    """What `chunked_ranks` gives for a score matrix [B, N + 1]; exclude: a mask of the same shape."""
    pairs = None if exclude is None else tuple(exclude.nonzero().T)
    return chunked_ranks(matrix_scorer(scores), scores, targets, pairs, chunk)


def brute_force_ranks(scores, targets, exclude=None):
    """The rule as defined, on the whole matrix: 1 + the other items (not padding, not excluded)
    that score at least the target's score; a NaN target ranks last."""
    items = scores[:, 1:]
    target_score = scores.gather(1, targets[:, None])
    beats = items >= target_score
    if exclude is not None:
        beats &= ~exclude[:, 1:]
    beats.scatter_(1, (targets - 1)[:, None], False)
    return torch.where(target_score[:, 0].isnan(), items.shape[1], 1 + beats.sum(dim=1))


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
    scorer = matrix_scorer(scores)
    expected = brute_force_ranks(scores, targets, exclude)
    assert expected[3] == 20
    assert torch.equal(chunked_ranks(scorer, scorer.encode(None), targets, (row, item), chunk), expected)
    assert torch.equal(chunked_ranks(scorer, scorer.encode(None), targets, None, chunk),
                       brute_force_ranks(scores, targets))


def test_same_scores_for_every_history_rank_by_binary_search_exactly_as_by_definition():
    g = torch.Generator().manual_seed(2)
    table = torch.randint(0, 6, (31,), generator=g).float()   # popularity counts: many ties
    table[0] = MIN
    targets = torch.randint(1, 31, (50,), generator=g)
    row = torch.randint(0, 50, (200,), generator=g)               # repeated pairs: one exclusion each
    item = torch.randint(1, 31, (200,), generator=g)
    row[:50], item[:50] = torch.arange(50), targets               # a target in its own history stays ranked
    exclude = torch.zeros(50, 31, dtype=torch.bool)
    exclude[row, item] = True
    scorer = table_scorer(table)
    every = table.expand(50, -1)
    assert scorer.shared is not None
    assert torch.equal(chunked_ranks(scorer, every, targets, (row, item), 4), brute_force_ranks(every, targets, exclude))
    assert torch.equal(chunked_ranks(scorer, every, targets, None, 4), brute_force_ranks(every, targets))


def test_rank_split_shrinks_its_batch_so_a_large_catalogue_is_ranked_in_one_pass(small_split, monkeypatch):
    data = SplitData.load(small_split)
    g = torch.Generator().manual_seed(3)
    table = torch.randn(data.n_items + 1, 8, generator=g)
    passes = []

    def scores(states, start, stop):
        passes.append((start, stop))
        out = states @ table[start:stop].T
        if start == 0:
            out[:, 0] = MIN
        return out

    scorer = Scorer(lambda history: table[history].mean(1), scores, data.n_items)
    users, expected = rank_split(scorer, data, "test", 5, 32, torch.device("cpu"), True)
    assert all(stop - start == data.n_items + 1 for start, stop in passes)
    passes.clear()
    # a budget of 8 histories' catalogue: batches of 32 would need slices, batches of 8 fit one
    monkeypatch.setattr(ranking, "SCORE_BUDGET", 8 * (data.n_items + 1))
    monkeypatch.setattr(ranking, "MIN_ROWS", 4)
    _, ranks = rank_split(scorer, data, "test", 5, 32, torch.device("cpu"), True)
    assert torch.equal(ranks, expected)
    assert len(passes) == math.ceil(len(users) / 8) and all(stop - start == data.n_items + 1 for start, stop in passes)


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


def by_definition_top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Each row's k columns ordered by value descending, ties by lower column."""
    return torch.tensor([sorted(range(scores.shape[1]), key=lambda j: (-row[j].item(), j))[:k] for row in scores])


@pytest.mark.parametrize("columns,k", [(40, 5), (2000, 100), (30, 30), (17, 10)])
def test_top_k_is_the_k_largest_in_order_with_ties_to_the_lower_column(columns, k):
    g = torch.Generator().manual_seed(columns)
    ties = torch.randint(0, 4, (9, columns), generator=g).float()     # many ties at the k-th value
    values, indices, total = top_k(ties, k)
    assert torch.equal(indices, by_definition_top(ties, k)) and torch.equal(values, ties.gather(1, indices))
    assert torch.allclose(total, torch.logsumexp(ties, dim=1), atol=1e-5)
    distinct = torch.randn(9, columns, generator=g) * 30
    values, indices, total = top_k(distinct, k)
    expected = distinct.topk(k, dim=1)
    assert torch.equal(values, expected.values) and torch.equal(indices, expected.indices)
    assert torch.allclose(total, torch.logsumexp(distinct, dim=1), atol=1e-4)


def test_top_k_rejects_a_row_of_nan():
    scores = torch.randn(3, 400)
    scores[1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        top_k(scores, 10)


def test_counting_on_several_threads_equals_one(monkeypatch):
    g = torch.Generator().manual_seed(4)
    scores = torch.randint(0, 9, (11, 300), generator=g).float()
    threshold = torch.randint(0, 9, (11,), generator=g).float()
    expected = (scores >= threshold[:, None]).sum(1)
    for threads in (1, 2, 3):
        monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
        assert torch.equal(count_at_least(scores, threshold), expected)


@pytest.mark.parametrize("chunk", [3, 8, 100])
def test_top_k_over_slices_gives_ties_to_the_lower_item(chunk):
    g = torch.Generator().manual_seed(5)
    scores = torch.randint(0, 3, (12, 31), generator=g).float()
    scorer = Scorer(lambda history: scores, lambda every, start, stop: every[:, start:stop], 30)
    items, top, total = chunked_topk(scorer, scorer.encode(None), 6, chunk)
    assert torch.equal(items, by_definition_top(scores[:, 1:], 6) + 1)
    assert torch.allclose(total, torch.logsumexp(scores[:, 1:], dim=1), atol=1e-5)


def test_throughput_is_timed_over_at_most_the_repeats_batches(small_split):
    data = SplitData.load(small_split)
    calls = []
    table = torch.randn(data.n_items + 1)

    def encode(history):
        calls.append(len(history))
        return table.expand(len(history), -1)

    scorer = Scorer(encode, lambda every, start, stop: every[:, start:stop], data.n_items)
    users = len(data.targets("test")[0])
    cost = inference_cost(scorer, data, 5, 1, 3, 2, torch.device("cpu"))
    assert users > 2 * 3 and cost["users_per_second"] > 0
    assert calls == [1] * (2 + 3) + [2] * (1 + 3)    # warm-up, latency; warm-up, 3 batches, not every user
    calls.clear()
    inference_cost(scorer, data, 5, 1, 1000, users, torch.device("cpu"))
    assert calls[-2:] == [users, users]                 # fewer users than the repeats allow: one pass
