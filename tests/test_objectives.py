"""Objectives for large catalogues (shared-negative sampled softmax, gBCE) and length-bucketed batches."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distillrec.errors import ParamsError
from distillrec.params import Params, StudentParams, TrainParams, validate_teacher
from distillrec.students.sasrec import SASRec
from distillrec.train.objectives import (Batch, SharedNegatives, build_objective, cross_entropy, gbce,
                                         objective_of, sampled_softmax)
from distillrec.train.trainer import batch_order, bucket_widths

N_ITEMS = 12


def tiny_batch(seed: int = 0, batch: int = 6, length: int = 7) -> Batch:
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randint(1, N_ITEMS + 1, (batch, length), generator=g)
    inputs[:2, :3] = 0  # left padding
    targets = torch.randint(1, N_ITEMS + 1, (batch, length), generator=g).masked_fill(inputs == 0, 0)
    return Batch(inputs, targets, torch.arange(1, batch + 1), torch.zeros_like(targets), g)


def model() -> SASRec:
    torch.manual_seed(0)
    return SASRec(N_ITEMS, StudentParams(hidden=8, layers=1, heads=1, dropout=0.0, max_length=10)).eval()


def gradients(base, m: SASRec, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    m.zero_grad()
    loss, _ = objective_of(base)(m, batch)
    loss.backward()
    return loss.detach(), torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None])


def test_uniform_negatives_over_the_whole_catalogue_are_full_cross_entropy():
    m, batch = model(), tiny_batch()
    full_loss, full_grad = gradients(cross_entropy, m, batch)
    loss, grad = gradients(sampled_softmax(SharedNegatives(N_ITEMS, N_ITEMS, "uniform")), m, batch)
    assert torch.allclose(loss, full_loss, atol=1e-6)
    assert torch.allclose(grad, full_grad, atol=1e-6)
    # more negatives than items: capped at the catalogue, still exact
    loss, _ = gradients(sampled_softmax(SharedNegatives(N_ITEMS, 10 * N_ITEMS, "uniform")), m, batch)
    assert torch.allclose(loss, full_loss, atol=1e-6)


@pytest.mark.parametrize("sampler", ["uniform", "popularity"])
def test_sampled_gradient_matches_full_cross_entropy_in_expectation(sampler):
    m, batch = model(), tiny_batch()
    _, full_grad = gradients(cross_entropy, m, batch)
    counts = np.array([0, 40, 20, 10, 8, 6, 5, 4, 3, 2, 1, 1, 0])
    objective = sampled_softmax(SharedNegatives(N_ITEMS, 8 if sampler == "uniform" else 48, sampler, counts))
    mean = torch.stack([gradients(objective, m, batch)[1] for _ in range(400)]).mean(0)
    cosine = F.cosine_similarity(mean, full_grad, dim=0)
    assert cosine > 0.99
    assert (mean - full_grad).norm() < 0.12 * full_grad.norm()
    # one draw alone is a noisy estimate: the average is what matches
    assert F.cosine_similarity(gradients(objective, m, batch)[1], full_grad, dim=0) < cosine


def test_popularity_negatives_follow_training_counts_and_reach_every_item():
    counts = np.array([0, 1000, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    sampler = SharedNegatives(N_ITEMS, 4000, "popularity", counts)
    drawn = torch.bincount(sampler.draw(torch.Generator().manual_seed(1)), minlength=N_ITEMS + 1)
    assert drawn[0] == 0 and (drawn[1:] > 0).all()          # never padding, every item can be drawn
    assert drawn[1] > 0.9 * 4000                            # q proportional to count + 1: 1001 / 1012
    expected = sampler.log_expected(torch.arange(1, N_ITEMS + 1)).exp()
    assert torch.allclose(expected.sum(), torch.tensor(4000.0))  # expected counts add up to K
    with pytest.raises(ValueError, match="training counts"):
        SharedNegatives(N_ITEMS, 4, "popularity", counts[:5])


def test_sampled_objectives_never_score_the_whole_catalogue(monkeypatch):
    m, batch = model(), tiny_batch()
    monkeypatch.setattr(SASRec, "score", lambda *a: pytest.fail("full-catalogue score called"))
    for objective in (sampled_softmax(SharedNegatives(N_ITEMS, 4, "uniform")),
                      gbce(SharedNegatives(N_ITEMS, 4, "uniform"), 0.75)):
        loss, logs = objective_of(objective)(m, batch)
        assert torch.isfinite(loss) and len(logs) == 1


def test_gbce_is_bce_at_t0_and_beta_is_one_when_every_other_item_is_a_negative():
    m, batch = model(), tiny_batch()
    sampler = SharedNegatives(N_ITEMS, 4, "uniform")
    loss0, _ = objective_of(gbce(sampler, 0.0))(m, batch)
    loss1, _ = objective_of(gbce(sampler, 1.0))(m, tiny_batch())  # same seed: same negatives
    states = m.encode(batch.inputs).states[batch.targets > 0]
    targets = batch.targets[batch.targets > 0]
    negatives = sampler.draw(tiny_batch().generator)  # what the objective drew from the same stream
    table = m.item_embeddings()
    pos = (states * table[targets]).sum(-1)
    neg = (states @ table[negatives].T).masked_fill(negatives[None] == targets[:, None], -torch.inf)
    bce = -(F.logsigmoid(pos) + F.logsigmoid(-neg).sum(-1)).mean()
    assert torch.allclose(loss0, bce, atol=1e-6)
    # t = 1 weighs the positive term by beta = alpha = K / (N - 1) < 1: fully calibrated
    beta = 4 / (N_ITEMS - 1)
    expected = -(beta * F.logsigmoid(pos) + F.logsigmoid(-neg).sum(-1)).mean()
    assert torch.allclose(loss1, expected, atol=1e-5)
    all_others = SharedNegatives(N_ITEMS, N_ITEMS - 1, "uniform")  # K = N' - 1: alpha = 1, beta = 1 for any t
    a, _ = objective_of(gbce(all_others, 0.0))(m, tiny_batch(3))
    b, _ = objective_of(gbce(all_others, 1.0))(m, tiny_batch(3))
    assert torch.allclose(a, b)


def test_objective_params_are_validated():
    with pytest.raises(ValueError, match="too few"):
        TrainParams(objective="sampled_softmax", negatives=1)
    with pytest.raises(ValueError, match="popularity applies to objective sampled_softmax"):
        TrainParams(objective="gbce", negatives=8, sampler="popularity")
    with pytest.raises(ParamsError, match="unknown key 'teachers.t.train.objective'"):
        validate_teacher({"family": "causal", "train": {"objective": "gbce", "negatives": 8}})  # its own losses
    teacher = validate_teacher({"family": "id", "train": {"objective": "gbce", "negatives": 8}})
    assert teacher.train.objective == "gbce"


def test_build_objective_names(small_split):
    from distillrec.data.splitdata import SplitData

    data = SplitData.load(small_split)
    batch = tiny_batch()
    full = build_objective(Params().train, data)(model(), batch)[0]
    assert torch.equal(full, objective_of(cross_entropy)(model(), batch)[0])
    popular = build_objective(TrainParams(objective="sampled_softmax", negatives=16, sampler="popularity"), data)
    loss, logs = popular(SASRec(data.n_items, StudentParams(hidden=8, layers=1, heads=1)), tiny_batch())
    assert "sampled_ce" in logs and torch.isfinite(loss)


def test_bucketed_batches_cover_every_window_once_with_less_padding_in_an_item_budget_in_few_shapes_and_repeat_per_seed():
    lengths = torch.as_tensor(np.random.default_rng(0).integers(1, 51, 5000))
    for mode in ("shuffle", "bucketed"):
        batches = batch_order(lengths, 16, mode, torch.Generator().manual_seed(7))
        assert torch.equal(torch.cat(batches).sort().values, torch.arange(5000)), mode
        again = batch_order(lengths, 16, mode, torch.Generator().manual_seed(7))
        assert all(torch.equal(a, b) for a, b in zip(batches, again))
    shuffled = batch_order(lengths, 16, "shuffle", torch.Generator().manual_seed(7))
    bucketed = batch_order(lengths, 16, "bucketed", torch.Generator().manual_seed(7))
    padded = {name: sum(len(b) * int(lengths[b].max()) for b in batches)
              for name, batches in (("shuffle", shuffled), ("bucketed", bucketed))}
    assert padded["bucketed"] < 0.6 * padded["shuffle"]
    # batches are not in length order: all batches are shuffled before training
    maxima = torch.stack([lengths[b].max() for b in bucketed])
    assert not (maxima[1:] >= maxima[:-1]).all()
    # a bucketed batch holds about batch_size x mean length items, not batch_size windows, so every
    # position weighs about the same in the per-step mean, and an epoch has about as many steps
    budget = 16 * lengths.float().mean()
    items = torch.stack([lengths[b].sum() for b in bucketed]).float()
    assert abs(len(bucketed) - len(shuffled)) <= 0.05 * len(shuffled)
    assert items.max() <= 2 * budget and abs(items.median() - budget) <= 0.15 * budget
    # every window shares its batch only with windows of its length bucket, and each bucket's batches
    # have one size (but its last): few distinct shapes, so a kept heap does not fragment
    widths = bucket_widths(50)
    assert widths[0] == 1 and widths[-1] == 50 and len(widths) <= 16
    assert ((widths[1:] - widths[:-1]) <= torch.ceil(0.25 * widths[:-1]).clamp(min=1)).all()
    sizes: dict[int, list[int]] = {}
    for batch in bucketed:
        buckets = torch.searchsorted(widths, lengths[batch]).unique()
        assert len(buckets) == 1
        sizes.setdefault(int(buckets), []).append(len(batch))
    for index, found in sizes.items():
        full = max(found)  # every batch of the bucket but its leftover has this many windows
        assert sorted(found)[1:] == [full] * (len(found) - 1)
        if widths[index] <= 10:  # many short windows or a few long ones
            assert full > 16
        if widths[index] >= 45:
            assert full < 16
