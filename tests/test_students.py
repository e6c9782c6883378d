"""Contract tests every student must pass: shapes, padding invariance, causality, trainability."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from distillrec.params import StudentParams
from distillrec.students import STUDENTS, BERT4Rec, build_student

N_ITEMS = 20
HIDDEN = 16
PARAMS = dict(hidden=HIDDEN, layers=2, heads=2, dropout=0.3, max_length=16, caser=dict(window=3))
CAUSAL = ["sasrec", "gru4rec", "caser"]


def make(model: str, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    params = StudentParams.model_validate({**PARAMS, **overrides, "model": model})
    return build_student(params, N_ITEMS).eval()


def histories(length: int = 8) -> torch.Tensor:
    """Left-padded rows of different lengths (each with at least one pad), newest item last."""
    real = [[3, 7, 1, 9, 4, 12, 5], [2, 8, 8, 15], [11], [6, 1, 13, 20, 17, 3]]
    return torch.tensor([[0] * (length - len(row)) + row for row in real])


def pad_left(history: torch.Tensor, extra: int) -> torch.Tensor:
    return F.pad(history, (extra, 0))


def encoder_inputs(model, history: torch.Tensor) -> torch.Tensor:
    """What the model actually encodes: BERT4Rec needs mask tokens to have something to do."""
    return history.masked_fill(history == 1, model.mask_token) if isinstance(model, BERT4Rec) else history



@pytest.fixture(params=sorted(STUDENTS))
def name(request) -> str:
    return request.param


def test_registry_builds_each_model(name):
    assert isinstance(make(name), STUDENTS[name])


def test_output_shapes(name):
    model = make(name)
    history = histories()
    encoded = model.encode(history)
    assert encoded.states.shape == (4, 8, HIDDEN)
    assert encoded.blocks and all(block.shape == (4, 8, HIDDEN) for block in encoded.blocks)
    assert model.item_embeddings().shape == (N_ITEMS + 1, HIDDEN)
    assert model.score(encoded.states).shape == (4, 8, N_ITEMS + 1)
    assert model.user_states(history).shape == (4, HIDDEN)


def test_padding_column_scores_lowest(name):
    model = make(name)
    scores = model.score(model.user_states(histories()))
    assert (scores[:, 0] == torch.finfo(scores.dtype).min).all()
    assert (scores[:, 1:] > scores[:, :1]).all()


def test_padding_invariance(name):
    model = make(name)
    history = encoder_inputs(model, histories())
    longer = pad_left(history, 7)
    with torch.no_grad():
        short, long = model.encode(history), model.encode(longer)
        real = history > 0
        assert torch.isfinite(long.states).all()
        torch.testing.assert_close(long.states[:, -8:][real], short.states[real], atol=1e-5, rtol=0)
        for a, b in zip(long.blocks, short.blocks):
            torch.testing.assert_close(a[:, -8:][real], b[real], atol=1e-5, rtol=0)
        assert (short.states[~real] == 0).all()
        torch.testing.assert_close(model.user_states(longer), model.user_states(history), atol=1e-5, rtol=0)


def test_all_padding_row_is_finite(name):
    model = make(name)
    with torch.no_grad():
        assert torch.isfinite(model.encode(torch.zeros(2, 5, dtype=torch.long)).states).all()


@pytest.mark.parametrize("name", CAUSAL)
def test_causal_models_never_look_ahead(name):
    model = make(name)
    history = histories()
    changed = history.clone()
    changed[:, 5] = torch.where(history[:, 5] > 0, N_ITEMS - history[:, 5] + 1, 0)
    with torch.no_grad():
        before, after = model.encode(history).states, model.encode(changed).states
    torch.testing.assert_close(after[:, :5], before[:, :5], atol=0, rtol=0)
    real = history[:, 5] > 0
    assert (after[real, 5] - before[real, 5]).abs().amax(dim=-1).gt(1e-4).all()


def test_bert4rec_sees_both_sides():
    model = make("bert4rec")
    history = histories()
    changed = history.clone()
    changed[0, -1] = 2
    with torch.no_grad():
        assert not torch.allclose(model.encode(changed).states[0, 2], model.encode(history).states[0, 2])


def test_bert4rec_masking():
    model = make("bert4rec", max_length=50, bert4rec=dict(mask_prob=0.2))
    sequence = torch.randint(1, N_ITEMS + 1, (400, 51))
    sequence[:, :10] = 0  # padding never gets masked
    inputs, targets = model.training_pair(sequence, torch.Generator().manual_seed(1))
    again, _ = model.training_pair(sequence, torch.Generator().manual_seed(1))
    other, _ = model.training_pair(sequence, torch.Generator().manual_seed(2))

    kept = sequence[:, 1:]
    masked = inputs == model.mask_token
    assert inputs.shape == targets.shape == (400, 50)
    assert torch.equal(again, inputs) and not torch.equal(other, inputs)
    assert not masked[kept == 0].any()
    assert torch.equal(targets[masked], kept[masked]) and (targets[~masked] == 0).all()
    assert torch.equal(inputs[~masked], kept[~masked])
    assert masked[kept > 0].float().mean().item() == pytest.approx(0.2, abs=0.01)


def test_bert4rec_masks_last_item_when_nothing_drawn():
    model = make("bert4rec", bert4rec=dict(mask_prob=0.01))
    sequence = torch.tensor([[0, 0, 0, 4, 5], [0, 0, 0, 0, 0]])
    inputs, targets = model.training_pair(sequence, torch.Generator().manual_seed(0))
    assert inputs[0, -1] == model.mask_token and targets[0, -1] == 5
    assert (inputs[1] == 0).all() and (targets[1] == 0).all()


def test_bert4rec_ranks_from_an_appended_mask():
    model = make("bert4rec")
    history = histories()
    appended = torch.cat([history, torch.full((4, 1), model.mask_token)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model.user_states(history), model.encode(appended).states[:, -1])


def test_rejects_histories_longer_than_max_length():
    with pytest.raises(ValueError, match="max_length"):
        make("sasrec").encode(torch.ones(1, 17, dtype=torch.long))


def test_eval_deterministic_train_stochastic(name):
    model = make(name)
    history = encoder_inputs(model, histories())
    with torch.no_grad():
        assert torch.equal(model.encode(history).states, model.encode(history).states)
        model.train()
        assert not torch.equal(model.encode(history).states, model.encode(history).states)


def test_gradients_reach_item_embeddings(name):
    model = make(name).train()
    sequence = pad_left(torch.tensor([[3, 7, 1, 9, 4, 12], [2, 8, 8, 15, 6, 5]]), 3)
    inputs, targets = model.training_pair(sequence, torch.Generator().manual_seed(0))
    logits = model.score(model.encode(inputs).states)
    F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=0).backward()
    grad = model.items.weight.grad
    assert grad[sequence.unique()[1:]].abs().sum(dim=1).gt(0).all()
    assert (grad[0] == 0).all()


def test_learns_a_sequential_pattern(name):
    """Item i is always followed by item i + 1 (cyclically): 100 Adam steps must learn it.

    BERT4Rec is the slowest (masked targets are fewer and noisier): ~0.8 after 100 steps.
    """
    model = make(name, dropout=0.0).train()
    generator = torch.Generator().manual_seed(0)
    starts = torch.randint(0, N_ITEMS, (64, 1), generator=generator)
    sequence = (starts + torch.arange(11)) % N_ITEMS + 1
    sequence[:32, :4] = 0  # half the rows are shorter
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(100):
        inputs, targets = model.training_pair(sequence, generator)
        logits = model.score(model.encode(inputs).states)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=0)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[0] > 2.5  # ≈ log(20) at the start
    assert sum(losses[-5:]) / 5 < 0.4 * losses[0]
