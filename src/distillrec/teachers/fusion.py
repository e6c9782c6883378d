"""The `fusion` teacher: collaborative and language knowledge in one item table.

Item i's vector = e_i + adaptor(z_i): a trainable ID embedding e_i (what the interactions say about
the item) plus UniSRec's MoE adaptor over z_i, a pretrained LM's vector of the item's text, computed
once by `embed_items@<model.embedding>` and frozen here. A SASRec larger than the student reads
histories from that table and scores the whole catalogue with it (full-catalogue CE, validation
selection, exported like the `id` teacher).

Why this fusion (UniSRec's "text + ID", docs/methods.md): text alone loses to IDs where items have
many interactions (the Office text-only teacher is below the ID baseline), IDs alone know nothing of
rare items; the sum lets popular items drift from their text while rare ones keep it. LLM-ESR's dual
view needs two sequence encoders (twice the cost) and LLMEmb fine-tunes the LLM; both also fuse per
item, so the sum is the cheapest member of the family, and with a frozen, precomputed z the teacher
costs no LM pass while training. `model.ids: false` drops e_i: the text-only ablation (what the
`text` family computes with a frozen encoder).

Items that occur in no training sequence are left out of the training softmax (their ID rows never
learn); at inference they are ranked by their text vector plus their untrained, near-zero ID row.
"""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl
import torch
import torch.nn.functional as F
from torch import nn

from distillrec.embed.store import read_item_embeddings
from distillrec.errors import DataError
from distillrec.params import FusionModelParams, FusionTeacherParams, StudentParams, TeacherExportParams
from distillrec.teachers.base import Teacher, device_of, read_extras
from distillrec.teachers.data import TeacherData
from distillrec.teachers.export import ExportTables
from distillrec.teachers.itemtext import weights_key
from distillrec.teachers.studentbacked import MoEAdaptor, TableSASRec, export_student, train_params
from distillrec.train.loop import FitState
from distillrec.train.objectives import build_objective
from distillrec.train.trainer import Trainer

log = logging.getLogger(__name__)


class FusionItems(nn.Module):
    """The item table [N + 1, hidden] (row 0 = 0): ID embedding + adaptor(LM vector).

    The table is computed once per weight version and reused by the step's input lookup and its
    scoring (one adaptor pass per step, not two); `vectors` [N + 1, D] is a buffer so the saved
    teacher needs no embed output to be re-read.
    """

    def __init__(self, vectors: torch.Tensor, cfg: FusionModelParams):
        super().__init__()
        self.register_buffer("vectors", vectors.float())
        self.adaptor = MoEAdaptor(vectors.shape[1], cfg.hidden, cfg.adaptor_experts, cfg.adaptor_dropout)
        self.adaptor.center(self.vectors[1:])
        self.ids = nn.Embedding(len(vectors), cfg.hidden, padding_idx=0) if cfg.ids else None
        if self.ids is not None:
            nn.init.normal_(self.ids.weight[1:], std=0.02)
        self._cached: tuple[tuple, torch.Tensor] | None = None

    def _compute(self) -> torch.Tensor:
        table = F.pad(self.adaptor(self.vectors[1:]), (0, 0, 1, 0))
        return table if self.ids is None else table + self.ids.weight

    def table(self) -> torch.Tensor:
        key = (weights_key(list(self.parameters())), self.training, torch.is_grad_enabled())
        if self._cached is None or self._cached[0] != key:
            self._cached = (key, self._compute())
        return self._cached[1]

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        return self.table()[history]


def sasrec_params(cfg: FusionModelParams) -> StudentParams:
    return StudentParams(model="sasrec", hidden=cfg.hidden, layers=cfg.layers, heads=cfg.heads,
                         dropout=cfg.dropout, max_length=cfg.max_length)


class FusionTeacher(Teacher):
    family = "fusion"

    def __init__(self, cfg: FusionTeacherParams, model: TableSASRec, item_map: pl.DataFrame):
        super().__init__(cfg, device_of(cfg))
        self.module, self.item_map = model.to(self.device), item_map

    @classmethod
    def _build(cls, cfg: FusionTeacherParams, vectors: torch.Tensor, item_map: pl.DataFrame) -> FusionTeacher:
        model = TableSASRec(sasrec_params(cfg.model), len(vectors) - 1, FusionItems(vectors, cfg.model))
        return cls(cfg, model, item_map)

    @classmethod
    def create(cls, cfg: FusionTeacherParams, data: TeacherData) -> FusionTeacher:
        torch.manual_seed(cfg.train.seed)
        folder = data.item_text / str(cfg.model.embedding)
        vectors = torch.as_tensor(read_item_embeddings(folder, data.n_items))
        teacher = cls._build(cfg, vectors, data.split.item_map)
        log.info("fusion teacher: %s item vectors (%d-d)%s, %d trainable parameters", folder, vectors.shape[1],
                 " + ID embeddings" if cfg.model.ids else " only (text-only ablation)",
                 sum(p.numel() for p in teacher.module.parameters() if p.requires_grad))
        return teacher

    def fit(self, data: TeacherData, checkpoint_dir: Path, live_dir: Path, run_id: str) -> FitState:
        f = self.cfg.model
        self.module.leave_out_unseen(data)
        train = train_params(self.cfg)
        trainer = Trainer(self.module, data.split, sasrec_params(f), train, build_objective(train, data.split),
                          checkpoint_dir, live_dir, run_id, self.cfg.train.seed)
        return trainer.fit()

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        self.item_map.write_parquet(folder / "item_map.parquet")
        torch.save({k: v.cpu() for k, v in self.module.state_dict().items()}, folder / "extras.pt")

    @classmethod
    def load(cls, folder: Path, cfg: FusionTeacherParams) -> FusionTeacher:
        folder = Path(folder)
        if not (folder / "item_map.parquet").is_file():
            raise DataError(f"{folder} is not a saved fusion teacher (no item_map.parquet): re-run train_teacher")
        state = read_extras(folder)
        if "items.vectors" not in state:
            raise DataError(f"{folder / 'extras.pt'} holds no item vectors: it is not a fusion teacher's; "
                            f"re-run train_teacher")
        teacher = cls._build(cfg, state["items.vectors"], pl.read_parquet(folder / "item_map.parquet"))
        try:
            teacher.module.load_state_dict(state)
        except RuntimeError as exc:  # other params: other shapes or keys
            raise DataError(f"{folder / 'extras.pt'} does not fit this teacher ({str(exc)[:300]}); it was "
                            f"written with other params: re-run train_teacher") from None
        teacher.module.eval()
        return teacher

    def export(self, data: TeacherData, examples: pl.DataFrame, cfg: TeacherExportParams) -> ExportTables:
        if data.n_items != self.module.n_items:
            raise DataError(f"the split has {data.n_items} items, the teacher was trained on "
                            f"{self.module.n_items}: re-run train_teacher")
        f = self.cfg.model
        info = {"family": "fusion", "embedding": f.embedding, "ids": f.ids, "hidden": f.hidden,
                "item_embeddings": "ID embedding + adaptor(LM item vector): the table the SASRec reads and "
                                   "scores with" if f.ids else "adaptor(LM item vector) (text-only ablation)"}
        return export_student(self.module, data, examples, cfg, f.max_length, info)
