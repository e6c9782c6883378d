"""Student training objectives; each maps (model, batch) to a loss and loggable numbers.

Distillation methods wrap these (they add terms keyed by the batch's (user, position) keys), so
the trainer never needs to know which method it runs. Full-catalogue CE scores every item at
every supervised position (memory batch x catalogue); the sampled objectives score each position
against its target and one set of negatives shared by the batch (memory batch x (1 + negatives)),
which is what makes catalogues of 10^5-10^6 items trainable (docs/methods.md §5).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from distillrec.data.splitdata import SplitData
from distillrec.params import TrainParams
from distillrec.students.base import Encoded, Student


@dataclass
class Batch:
    """One training step: targets > 0 are supervised; `positions` key them into the split."""

    inputs: torch.Tensor      # [B, L] left-padded item ids
    targets: torch.Tensor     # [B, L] next (or masked) item per position, 0 = no target
    users: torch.Tensor       # [B] user_idx
    positions: torch.Tensor   # [B, L] sequence position of each target
    generator: torch.Generator


@dataclass
class Step:
    """A batch encoded once, at its supervised positions: what the base loss and every teacher term
    of a distillation objective read (so the student's forward pass runs once per step)."""

    encoded: Encoded
    keep: torch.Tensor                  # [B, L] bool: supervised positions
    states: torch.Tensor                # [M, d] states at those positions
    targets: torch.Tensor               # [M]
    logits: torch.Tensor | None = None  # [M, N + 1], set by a base loss that scored the whole catalogue


def encode_step(model: Student, batch: Batch) -> Step:
    """Encodes `batch`; no logits are computed for padding."""
    encoded = model.encode(batch.inputs)
    keep = batch.targets > 0
    return Step(encoded, keep, encoded.states[keep], batch.targets[keep])


Loss = tuple[torch.Tensor, dict[str, float]]
BaseLoss = Callable[[Student, Batch, Step], Loss]   # the supervised loss; distillation adds terms to it
Objective = Callable[[Student, Batch], Loss]        # what the trainer calls


def objective_of(base: BaseLoss) -> Objective:
    """The trainer's objective for a base loss alone (no teacher)."""
    return lambda model, batch: base(model, batch, encode_step(model, batch))


def cross_entropy(model: Student, batch: Batch, step: Step) -> Loss:
    """Softmax cross-entropy over the full catalogue at every supervised position; keeps the logits
    in `step` (RD reuses them for the student's top K, logit KD for its softmax)."""
    step.logits = model.score(step.states)
    loss = F.cross_entropy(step.logits, step.targets)
    return loss, {"ce": loss.item()}


def sampled_bce(negatives: int) -> BaseLoss:
    """BCE with `negatives` uniformly sampled items per target (SASRec/DLLM2Rec style)."""

    def loss_of(model: Student, batch: Batch, step: Step) -> Loss:
        states, targets = step.states, step.targets
        table = model.item_embeddings()
        shape = (len(targets), negatives)
        neg = torch.randint(1, model.n_items + 1, shape, generator=batch.generator).to(targets.device)
        clash = neg == targets[:, None]
        neg = torch.where(clash, neg % model.n_items + 1, neg)  # never the positive itself
        pos_logit = (states * table[targets]).sum(-1)
        neg_logit = torch.einsum("bd,bkd->bk", states, table[neg])
        loss = -(F.logsigmoid(pos_logit).mean() + F.logsigmoid(-neg_logit).sum(-1).mean())
        return loss, {"bce": loss.item()}

    return loss_of


class SharedNegatives:
    """One set of `negatives` items per step, shared by every position of the batch.

    uniform: drawn without replacement (at most the whole catalogue). popularity: drawn with
    replacement with probability q_i proportional to (training count + 1), so every item can be
    drawn. `log_expected` is log E[times item i is in the set] (K/N, resp. K q_i): subtracting it
    from a negative's logit (logQ correction, Yi et al., RecSys'19) makes the sum of exp over the
    set an unbiased estimate of the sum over the catalogue; with uniform negatives = catalogue the
    correction is 0 and sampled softmax is full CE exactly.
    """

    def __init__(self, n_items: int, negatives: int, sampler: str, counts: np.ndarray | None = None):
        self.n_items, self.sampler = n_items, sampler
        if sampler == "uniform":
            self.negatives = min(negatives, n_items)
        elif sampler == "popularity":
            if counts is None or len(counts) != n_items + 1:
                raise ValueError(f"popularity negatives need training counts for items 0..{n_items}")
            self.negatives = negatives
            weights = torch.as_tensor(counts[1:], dtype=torch.float64) + 1.0
            self.probs = (weights / weights.sum()).float()
        else:
            raise ValueError(f"sampler must be uniform or popularity, got {sampler!r}")

    def draw(self, generator: torch.Generator) -> torch.Tensor:
        """[negatives] item ids in 1..n_items (on the CPU: the generator's device)."""
        if self.sampler == "uniform":
            return torch.randperm(self.n_items, generator=generator)[:self.negatives] + 1
        return torch.multinomial(self.probs, self.negatives, replacement=True, generator=generator) + 1

    def log_expected(self, negatives: torch.Tensor) -> torch.Tensor:
        """[K] log of each drawn item's expected count in a set."""
        if self.sampler == "uniform":
            return torch.full(negatives.shape, math.log(self.negatives / self.n_items), device=negatives.device)
        return math.log(self.negatives) + self.probs.to(negatives.device)[negatives - 1].log()


def shared_negative_logits(model: Student, batch: Batch, step: Step, sampler: SharedNegatives
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(positive logits [M], negative logits [M, K], the negatives' log expected counts [K]) at the
    supervised positions; a negative that is the position's own target (or an item the model's
    training scores leave out) is masked to -inf."""
    states, targets = step.states, step.targets
    negatives = sampler.draw(batch.generator).to(targets.device)
    table = model.item_embeddings()
    positive = (states * table[targets]).sum(-1)
    clash = negatives[None, :] == targets[:, None]
    if model.training and model.unseen is not None:  # what `score` leaves out, no sample draws in
        clash = clash | model.unseen[negatives][None, :]
    negative = (states @ table[negatives].T).masked_fill(clash, -torch.inf)
    return positive, negative, sampler.log_expected(negatives)


def sampled_softmax(sampler: SharedNegatives) -> BaseLoss:
    """Softmax cross-entropy of the target against the logQ-corrected shared negatives (Jean et al. 2015)."""

    def loss_of(model: Student, batch: Batch, step: Step) -> Loss:
        positive, negative, log_expected = shared_negative_logits(model, batch, step, sampler)
        logits = torch.cat([positive[:, None], negative - log_expected], dim=1)
        loss = -torch.log_softmax(logits, dim=1)[:, 0].mean()
        return loss, {"sampled_ce": loss.item()}

    return loss_of


def gbce(sampler: SharedNegatives, t: float) -> BaseLoss:
    """gSASRec's generalised BCE (Petrov & Macdonald, RecSys'23): BCE over uniform negatives with the
    positive's log-sigmoid raised to beta = alpha (t (1 - 1/alpha) + 1/alpha), alpha = K / (N - 1);
    t = 1 undoes the overconfidence that negative sampling teaches, t = 0 is plain BCE."""
    if sampler.sampler != "uniform":
        raise ValueError("gbce is calibrated for uniform negatives: set train.sampler: uniform")
    alpha = sampler.negatives / max(sampler.n_items - 1, 1)
    beta = alpha * (t * (1 - 1 / alpha) + 1 / alpha)

    def loss_of(model: Student, batch: Batch, step: Step) -> Loss:
        positive, negative, _ = shared_negative_logits(model, batch, step, sampler)  # uniform: no correction
        loss = -(beta * F.logsigmoid(positive) + F.logsigmoid(-negative).sum(-1)).mean()
        return loss, {"gbce": loss.item()}

    return loss_of


def build_base(train: TrainParams, data: SplitData) -> BaseLoss:
    """The base loss named by `train.objective` (popularity negatives follow `data`'s training counts)."""
    if train.objective == "ce":
        return cross_entropy
    if train.objective == "bce":
        return sampled_bce(train.negatives)
    sampler = SharedNegatives(data.n_items, train.negatives, train.sampler, data.training_counts())
    return sampled_softmax(sampler) if train.objective == "sampled_softmax" else gbce(sampler, train.gbce_t)


def build_objective(train: TrainParams, data: SplitData) -> Objective:
    """The trainer's objective without a teacher."""
    return objective_of(build_base(train, data))
