"""The `text` teacher (UniSRec-like): an item is what a pre-trained text encoder makes of its text.

Item i's vector = adaptor(mean-pooled encoder output of its text: the `text.fields` of item_map),
the adaptor being UniSRec's mixture of parametric-whitening experts (`MoEAdaptor`). The students'
SASRec reads history vectors from that table and scores every item with it (logits = states @ table^T,
item 0 never scored), trained by the students' trainer: CE over the full catalogue, validation-NDCG
selection, checkpoints. Nothing is learned per item id, so an item never seen in training is ranked
from its text alone. Such items are left out of the training softmax (`Student.unseen`): as
constant negatives that are never a target they would be pushed below every trained item (on
ml-100k, held-out items then ranked at the median 1084 of 1572, worse than chance).

`finetune`: `lora` (peft adapters on the encoder), `full`, or `frozen` (the encoder is not trained).

Encoder cost: one catalogue pass per epoch. Encoder outputs are cached (`itemtext.TextEncoder`) and
recomputed only when encoder weights change, so a frozen encoder is encoded once. With a trainable
encoder, each training step re-encodes with gradient the batch's items (histories and targets; a
random `model.grad_items` of them when there are more) and splices them into the cached table: the
other rows are constants from the epoch's start, so the encoder learns from the batch's items while
the adaptor and the SASRec see the whole table. The step's update makes the cache stale; it is
recomputed at the next use in eval mode (the validation after the epoch, or the export) and is
fresh again when the next epoch starts. A whole table with gradient per step would cost a
catalogue pass, with its backward, per step.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, AutoTokenizer

from distillrec.errors import DataError
from distillrec.hf import from_pretrained
from distillrec.params import StudentParams, TeacherExportParams, TextModelParams, TextTeacherParams
from distillrec.teachers.backbone import apply_finetune, load_backbone, resolve_dtype, save_backbone
from distillrec.teachers.base import Teacher, device_of, read_extras
from distillrec.teachers.data import TeacherData
from distillrec.teachers.export import ExportTables
from distillrec.teachers.itemtext import ItemTokens, TextEncoder, item_texts, weights_key
from distillrec.teachers.studentbacked import MoEAdaptor, TableSASRec, export_student, train_params
from distillrec.train.loop import FitState
from distillrec.train.objectives import Batch, Objective, build_objective
from distillrec.train.trainer import Trainer, adamw

log = logging.getLogger(__name__)
ENCODER = "items.text.encoder."   # state-dict prefix of the encoder: saved as backbone/adapter, not in extras


class TextItems(nn.Module):
    """The item table [N + 1, hidden] (row 0 = padding = 0): the adaptor over the encoder's outputs.

    Training mode: inside `step` the table of that step, else the adaptor over the cache as it is.
    Eval mode: the adaptor over a fresh catalogue, kept until encoder or adaptor weights change.
    """

    def __init__(self, text: TextEncoder, adaptor: MoEAdaptor, grad_items: int | None):
        super().__init__()
        self.text, self.adaptor, self.grad_items = text, adaptor, grad_items
        self._step: torch.Tensor | None = None
        self._inference: tuple[tuple, torch.Tensor] | None = None

    def _adapt(self, vectors: torch.Tensor) -> torch.Tensor:
        return F.pad(self.adaptor(vectors[1:]), (0, 0, 1, 0))

    @contextlib.contextmanager
    def step(self, items: torch.Tensor, generator: torch.Generator) -> Iterator[None]:
        """Within: one training step's table, with `items` (1..N) re-encoded with gradient."""
        vectors = self.text.cached()
        if self.text.trainable:
            if self.grad_items is not None and len(items) > self.grad_items:
                items = items[torch.randperm(len(items), generator=generator)[:self.grad_items].to(items.device)]
            vectors = vectors.index_put((items,), self.text.encode(items))
        self._step = self._adapt(vectors)
        try:
            yield
        finally:
            self._step = None

    def table(self) -> torch.Tensor:
        if self.training:
            return self._step if self._step is not None else self._adapt(self.text.cached())
        key = (self.text.version(), weights_key(list(self.adaptor.parameters())))
        if self._inference is None or self._inference[0] != key:
            with torch.no_grad():
                self._inference = (key, self._adapt(self.text.catalogue()))
        return self._inference[1]

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        return self.table()[history]


def with_text_rows(objective: Objective) -> Objective:
    """`objective` on a step table in which the batch's items were re-encoded with gradient."""

    def run(model: TableSASRec, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        items = torch.cat([batch.inputs.flatten(), batch.targets.flatten()]).unique()
        with model.items.step(items[items > 0], batch.generator):
            return objective(model, batch)

    return run


class TextTrainer(Trainer):
    """The students' trainer; the encoder may have its own lr; every epoch starts from a fresh cache."""

    def __init__(self, model: TableSASRec, *args: Any, encoder_lr: float | None = None, **kwargs: Any):
        super().__init__(model, *args, **kwargs)
        if encoder_lr is not None:
            encoder = {id(p) for p in model.items.text.parameters()}
            groups = [[p for p in model.parameters() if (id(p) in encoder) == own and p.requires_grad]
                      for own in (False, True)]
            self.optimizer = adamw([{"params": groups[0]}, {"params": groups[1], "lr": encoder_lr}],
                                   self.cfg.lr, self.cfg.weight_decay)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        self.model.items.text.catalogue()
        return super().train_epoch(epoch)


def sasrec_params(text: TextModelParams) -> StudentParams:
    return StudentParams(model="sasrec", hidden=text.hidden, layers=text.layers, heads=text.heads,
                         dropout=text.dropout, max_length=text.max_length)


class TextTeacher(Teacher):
    family = "text"

    def __init__(self, cfg: TextTeacherParams, model: TableSASRec, tokenizer: Any, item_map: pl.DataFrame):
        super().__init__(cfg, device_of(cfg))
        self.module, self.tokenizer, self.item_map = model.to(self.device), tokenizer, item_map

    @classmethod
    def _build(cls, cfg: TextTeacherParams, encoder: nn.Module, tokenizer: Any, item_map: pl.DataFrame) -> TextTeacher:
        t = cfg.model
        tokens = ItemTokens.build(tokenizer, item_texts(item_map, t.fields), t.max_text_tokens)
        text = TextEncoder(encoder, tokens, t.encode_batch_size, encoder.config.hidden_size)
        adaptor = MoEAdaptor(text.dim, t.hidden, t.adaptor_experts, t.adaptor_dropout)
        items = TextItems(text, adaptor, t.grad_items)
        return cls(cfg, TableSASRec(sasrec_params(t), tokens.n_items, items), tokenizer, item_map)

    @classmethod
    def create(cls, cfg: TextTeacherParams, data: TeacherData) -> TextTeacher:
        torch.manual_seed(cfg.train.seed)
        tokenizer = from_pretrained(AutoTokenizer, cfg.model.base_model)
        encoder = from_pretrained(AutoModel, cfg.model.base_model, dtype=resolve_dtype(cfg, device_of(cfg)))
        encoder = apply_finetune(encoder, cfg, default_targets=None, task_type="FEATURE_EXTRACTION")
        teacher = cls._build(cfg, encoder, tokenizer, data.split.item_map)
        teacher.module.items.adaptor.center(teacher.encoder.catalogue()[1:])
        log.info("text teacher: %s (%s), %d items, %d trainable parameters", cfg.model.base_model, cfg.model.finetune,
                 data.n_items, sum(p.numel() for p in teacher.module.parameters() if p.requires_grad))
        return teacher

    @property
    def encoder(self) -> TextEncoder:
        return self.module.items.text

    def fit(self, data: TeacherData, checkpoint_dir: Path, live_dir: Path, run_id: str) -> FitState:
        text = self.cfg.model
        self.module.leave_out_unseen(data)
        train = train_params(self.cfg)
        trainer = TextTrainer(self.module, data.split, sasrec_params(text), train,
                              with_text_rows(build_objective(train, data.split)), checkpoint_dir, live_dir, run_id,
                              self.cfg.train.seed,
                              encoder_lr=self.cfg.train.encoder_lr)
        state = trainer.fit()
        log.info("text teacher: %d catalogue passes of the encoder for %d epochs", self.encoder.passes, state.epoch)
        return state

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        save_backbone(self.encoder.encoder, self.cfg, folder)
        self.tokenizer.save_pretrained(folder / "tokenizer")
        self.item_map.write_parquet(folder / "item_map.parquet")
        torch.save({k: v.cpu() for k, v in self.module.state_dict().items() if not k.startswith(ENCODER)},
                   folder / "extras.pt")

    @classmethod
    def load(cls, folder: Path, cfg: TextTeacherParams) -> TextTeacher:
        folder = Path(folder)
        if not (folder / "item_map.parquet").is_file():
            raise DataError(f"{folder} is not a saved text teacher (no item_map.parquet): re-run train_teacher")
        tokenizer = from_pretrained(AutoTokenizer, str(folder / "tokenizer"))
        encoder = load_backbone(AutoModel, cfg, folder, resolve_dtype(cfg, device_of(cfg)))
        teacher = cls._build(cfg, encoder, tokenizer, pl.read_parquet(folder / "item_map.parquet"))
        try:
            missing, unexpected = teacher.module.load_state_dict(read_extras(folder), strict=False)
            wrong = unexpected + [k for k in missing if not k.startswith(ENCODER)]
        except RuntimeError as exc:  # the same keys with other shapes
            wrong = [str(exc)[:300]]
        if wrong:
            raise DataError(f"{folder / 'extras.pt'} does not fit this teacher ({', '.join(wrong[:3])}); it was "
                            f"written with other params: re-run train_teacher")
        teacher.module.eval()
        return teacher

    def export(self, data: TeacherData, examples: pl.DataFrame, cfg: TeacherExportParams) -> ExportTables:
        if data.n_items != self.encoder.tokens.n_items:
            raise DataError(f"the split has {data.n_items} items, the teacher was trained on "
                            f"{self.encoder.tokens.n_items}: re-run train_teacher")
        t = self.cfg.model
        info = {"family": "text", "base_model": self.cfg.model.base_model, "finetune": self.cfg.model.finetune,
                "fields": t.fields, "hidden": t.hidden,
                "item_embeddings": "adaptor(mean-pooled encoder output of the item's text): the table the "
                                   "SASRec reads and scores with"}
        tables = export_student(self.module, data, examples, cfg, t.max_length, info)
        tables.info["catalogue_passes"] = self.encoder.passes
        return tables
