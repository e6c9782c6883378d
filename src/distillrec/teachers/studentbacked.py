"""What the teachers built on a student architecture share (`id`, `text`, `fusion`).

They train with the students' trainer (the students' objectives, validation selection, checkpoints) and
export alike: log-softmax top-K over the whole catalogue, the scored item table, and the state
that scores each history. The text and fusion teachers replace the SASRec's id embedding with an
item module (`TableSASRec`), whose language-model part goes through UniSRec's adaptor (`MoEAdaptor`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import polars as pl
import torch
from torch import nn
from tqdm import tqdm

from distillrec.params import (STUDENT_TRAINING, FusionTeacherParams, IdTeacherParams, StudentParams,
                               TeacherExportParams, TextTeacherParams, TrainParams)
from distillrec.students import Student
from distillrec.students.base import trim_padding
from distillrec.students.sasrec import SASRec
from distillrec.teachers.data import TeacherData
from distillrec.teachers.export import ExportTables, Rows, States, TopK
from distillrec.train.ranking import chunked_topk, score_layout, student_scorer

log = logging.getLogger(__name__)
SCORE = "log-softmax of the model's logit over the full catalogue; higher = better"


def train_params(cfg: IdTeacherParams | TextTeacherParams | FusionTeacherParams) -> TrainParams:
    """The students' trainer settings from the teacher's `train` section."""
    t = cfg.train
    return TrainParams(**{name: getattr(t, name) for name in STUDENT_TRAINING}, lr=t.lr, lr_schedule=t.lr_schedule,
                       weight_decay=t.weight_decay, batch_size=t.batch_size, epochs=t.epochs, patience=t.patience,
                       seeds=[t.seed], device=t.device, threads=t.threads, window_stride=t.window_stride)


def export_student(model: Student, data: TeacherData, examples: pl.DataFrame, cfg: TeacherExportParams,
                   max_length: int, info: dict) -> ExportTables:
    """Full-catalogue scores of each example's history; the top K by log-softmax, the output item
    table and the state that scores each history (the id and text teachers are students inside).
    The rows are a generator of chunks: the writer streams them to disk as they are computed."""
    model = model.eval()
    table = model.item_embeddings()[1:].detach().float().cpu().numpy()
    return ExportTables(chunks=_scored_rows(model, data, examples, cfg, max_length), item_embeddings=table,
                        info={"score": SCORE, "max_length": max_length,
                              "states": "the state that scores the history"} | info,
                        resume_from=lambda start: _scored_rows(model, data, examples.slice(start), cfg, max_length))


@torch.no_grad()
def _scored_rows(model: Student, data: TeacherData, examples: pl.DataFrame, cfg: TeacherExportParams,
                 max_length: int) -> Iterator[Rows]:
    device = next(model.parameters()).device
    users = examples["user_idx"].to_numpy().astype(np.int64)
    positions = examples["position"].to_numpy().astype(np.int64)
    k = min(cfg.top_k, data.n_items)
    batch, chunk = score_layout(cfg.batch_size, data.n_items + 1)
    scorer = student_scorer(model)
    for start in tqdm(range(0, len(users), batch), desc="top-K", disable=None):
        u, p = users[start:start + batch], positions[start:start + batch]
        history, = trim_padding(torch.as_tensor(data.split.histories(u, p, max_length), device=device))
        state = model.user_states(history)
        items, logits, total = chunked_topk(scorer, state, k, chunk)
        yield Rows(TopK(u, p, items.cpu().numpy(), (logits - total[:, None]).cpu().numpy()),
                   States(u, p, state.float().cpu().numpy()))


class MoEAdaptor(nn.Module):
    """UniSRec's adaptor: `experts` whitening maps (x - b_k) W_k, mixed by a softmax gate over x.

    Text vectors share a large common component (what makes any two titles alike); the learned
    offsets b_k remove it, and the gate lets different kinds of text use different maps, so the
    item table is not one linear image of the text space (with a frozen MiniLM on ml-100k one linear
    map learned much slower and stopped lower, and Linear + LayerNorm hardly learned: BENCHMARKS.md).
    W ~ N(0, 0.02) and the gate 0 (experts start equally weighted) as UniSRec; the offsets start at
    the catalogue's mean text vector (`center`), not at 0: the vectors of a weakly trained encoder
    are nearly parallel (cosine ~0.97 for a random BERT), and learning that mean from 0 takes epochs.
    """

    def __init__(self, d_text: int, hidden: int, experts: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.offsets = nn.Parameter(torch.zeros(experts, d_text))
        self.maps = nn.Parameter(torch.randn(experts, d_text, hidden) * 0.02)
        self.gate = nn.Parameter(torch.zeros(d_text, experts))

    @torch.no_grad()
    def center(self, vectors: torch.Tensor) -> None:
        self.offsets.copy_(vectors.mean(0).expand_as(self.offsets))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, d_text] -> [N, hidden]; (x - b_k) W_k is computed as x W_k - b_k W_k, never [N, K, d_text]."""
        experts, d_text, hidden = self.maps.shape
        mapped = self.dropout(x) @ self.maps.transpose(0, 1).reshape(d_text, experts * hidden)
        mapped = mapped.view(len(x), experts, hidden) - torch.einsum("kd,kdh->kh", self.offsets, self.maps)
        return (torch.softmax(x @ self.gate, dim=-1).unsqueeze(-1) * mapped).sum(1)


class TableSASRec(SASRec):
    """The students' SASRec with an item module (`table()` [N + 1, d], `forward(history)`) in place
    of its id embedding, for input and scoring alike: the text and fusion teachers.

    Items that no training sequence holds are marked `unseen` (`Student.score`): they are left out
    of the training softmax and never drawn as negatives, so only their text places them.
    """

    def __init__(self, params: StudentParams, n_items: int, items: nn.Module):
        super().__init__(n_items, params)
        self.items = items

    def item_embeddings(self) -> torch.Tensor:
        return self.items.table()

    def leave_out_unseen(self, data: TeacherData) -> None:
        """Items that occur in no training sequence are left out of the training softmax."""
        unseen = data.split.training_counts() == 0
        unseen[0] = False   # padding is masked by `score` anyway
        self.unseen = torch.as_tensor(unseen, device=next(self.parameters()).device)
        if unseen.any():
            log.info("%d items occur in no training sequence: left out of the training softmax", unseen.sum())
