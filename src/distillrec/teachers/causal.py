"""BIGRec-style causal-LM teacher (docs/methods.md §3.2): any `AutoModelForCausalLM`, items listed by title.

Training (one forward pass per example serves both losses):
* `lm_weight` x next-title LM loss on the response tokens only. BIGRec also trains on the prompt
  (`train_on_inputs=True`); we do not, so the loss measures recommendation, not prompt copying.
* `scoring_weight` x a softmax loss over the catalogue at the end of every item piece of the
  prompt: logits = head(h) @ E[1:]^T, target = the next item. E (the item table) starts from the
  base model's title embeddings. A prompt of the last max_history items thus supervises every
  context length 1..max_history, and only training targets (the example's target and the items
  before it) are ever predicted.
Validation loss (selection) is the same two losses on validation examples, with the scoring loss
at the last history item only, i.e. on the validation target.

Ranking (`export.ranking`):
* `scoring` (ours): one forward pass per window of a user's items scores every target in it
  (`scoring.py`); score = log-softmax of the scoring head over the catalogue.
* `grounding` (BIGRec): beam-search a title per example, embed it with the base model, rank the
  catalogue by L2 distance (`grounding.py`); score = row z-score of the negative distance.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from distillrec.errors import DataError
from distillrec.hf import from_pretrained
from distillrec.io import write_json
from distillrec.params import CausalExportParams, CausalTeacherParams
from distillrec.teachers import grounding
from distillrec.teachers.accelerated import AcceleratedTask, fit_accelerated
from distillrec.teachers.backbone import apply_finetune, load_backbone, resolve_dtype, save_backbone
from distillrec.teachers.base import Teacher, device_of, load_extras
from distillrec.teachers.bigrec import PromptPieces, pad, tokenizer_texts
from distillrec.teachers.data import TeacherData
from distillrec.teachers.export import ExportTables, States, TopK
from distillrec.teachers.scoring import WindowPlan, window_states
from distillrec.tokenizer import train_tokenizer
from distillrec.train.loop import FitState, epoch_generator

log = logging.getLogger(__name__)

PAD, EOS, UNK, BOS = "<pad>", "</s>", "<unk>", "<s>"
INIT_LOGIT_SCALE = 10.0   # the scoring head starts as logits ~ INIT_LOGIT_SCALE * cos(h, E_i)
TITLE_MARGIN = 4          # generated tokens beyond max_title_tokens: quotes and eos
SCORING_SCORE = ("log-probability of the item under the scoring head's softmax over the whole catalogue, "
                 "log_softmax(head(h) @ E[1:]^T) with h the state at the end of the last history item; "
                 "higher = better")
GROUNDING_SCORE = ("row z-score of the negative L2 distance between φ(generated title) and φ(item title) over "
                   "the whole catalogue, -(d - mean_row(d)) / std_row(d), φ = base model (no LoRA) last-layer "
                   "last-token state; higher = better; raw distances in info['distance']")
SCORING_CONTEXT = ("the target at position p sees items s..p-1 with s the largest multiple of "
                   "ceil(max_history/2) such that p - s <= max_history (all history when p <= max_history)")
GROUNDING_CONTEXT = "the last max_history items before the target (BIGRec)"
TIE_BREAK = "equal titles tie exactly; ties go to the item with more training targets, then the smaller id"


def _causal_lm(lm: torch.nn.Module) -> PreTrainedModel:
    """The Hugging Face model under a peft wrapper (LoRA layers stay injected in it)."""
    return lm.get_base_model() if hasattr(lm, "get_base_model") else lm


class CausalRecModule(torch.nn.Module):
    """The LM plus the scoring head and item table, one module so the Loop checkpoints every trainable part."""

    def __init__(self, lm: torch.nn.Module, n_items: int, hidden: int):
        super().__init__()
        self.lm = lm
        self.items = torch.nn.Embedding(n_items + 1, hidden)   # E; row 0 pads
        self.head = torch.nn.Linear(hidden, hidden, bias=False)

    def encode(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Last-layer hidden states [B, T, H]; positions follow the mask, so left and right padding both work."""
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return _causal_lm(self.lm).base_model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                              use_cache=False).last_hidden_state

    def phi(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """`encode` with LoRA disabled: BIGRec's grounding embedding (a fully fine-tuned model is its own base)."""
        if hasattr(self.lm, "disable_adapter"):
            with self.lm.disable_adapter():
                return self.encode(ids, mask)
        return self.encode(ids, mask)

    def item_logits(self, states: torch.Tensor) -> torch.Tensor:
        return self.head(states.float()) @ self.items.weight[1:].T

    def init_items(self, titles: torch.Tensor) -> None:
        """E[1:] = unit title embeddings; head = identity scaled so logits start near INIT_LOGIT_SCALE * cos."""
        norms = titles.norm(dim=1, keepdim=True).clamp(min=1e-6)
        with torch.no_grad():
            self.items.weight.zero_()
            self.items.weight[1:] = (titles / norms).to(self.items.weight)
            self.head.weight.copy_(torch.eye(titles.shape[1]) * (INIT_LOGIT_SCALE / norms.mean()))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, lm_at: torch.Tensor, lm_targets: torch.Tensor,
                state_at: torch.Tensor, state_targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed LM loss over response tokens and summed scoring loss over item-end states."""
        hidden = self.encode(ids, mask)
        token_logits = _causal_lm(self.lm).get_output_embeddings()(hidden[lm_at[0], lm_at[1]]).float()
        lm = F.cross_entropy(token_logits, lm_targets, reduction="sum")
        scoring = F.cross_entropy(self.item_logits(hidden[state_at[0], state_at[1]]), state_targets - 1,
                                  reduction="sum")
        return lm, scoring


def _gguf(base_model: str | None) -> Path | None:
    path = Path(base_model).expanduser() if base_model else None
    return path if path is not None and path.suffix == ".gguf" else None


def _pretrained(cfg: CausalTeacherParams, dtype: torch.dtype) -> tuple[Any, PreTrainedModel]:
    """Tokenizer and model of `base_model`: a local folder, a hub id (cached), or a .gguf file."""
    name, kwargs = str(cfg.model.base_model), {}
    gguf = _gguf(cfg.model.base_model)
    if gguf is not None:
        if not gguf.is_file():
            raise DataError(f"teacher base_model {cfg.model.base_model!r}: no such GGUF file")
        name, kwargs = str(gguf.parent), {"gguf_file": gguf.name}
    tokenizer = from_pretrained(AutoTokenizer, name, **kwargs)
    model = from_pretrained(AutoModelForCausalLM, name, dtype=torch.float32 if gguf else dtype, **kwargs)
    if gguf is not None:  # a GGUF-loaded model cannot save_pretrained: copy it into a plain one
        plain = type(model)(model.config)
        plain.load_state_dict(model.state_dict())
        model = plain.to(dtype)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, model


def _sample(n: int, size: int | None, seed: int) -> np.ndarray:
    """Row indices of a seeded random subset (sorted), or all rows."""
    if size is None or size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


def config_llama(cfg: CausalTeacherParams, titles: list[str]) -> tuple[Any, LlamaConfig]:
    """For `base_model: null`: a tokenizer trained on the titles and prompt words, and the LlamaConfig of
    `cfg.model.config` sized for it (positions: the longest prompt plus a response)."""
    c = cfg.model.config
    tokenizer = train_tokenizer(tokenizer_texts(titles[1:]), c.vocab_size, pad=PAD, eos=EOS, unk=UNK, bos=BOS)
    pieces = PromptPieces.build(tokenizer, titles, cfg.model.max_title_tokens)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=c.d_model, intermediate_size=c.d_ff,
                         num_hidden_layers=c.layers, num_attention_heads=c.heads, num_key_value_heads=c.heads,
                         tie_word_embeddings=False,
                         max_position_embeddings=pieces.max_length(cfg.model.max_history,
                                                                   cfg.model.max_title_tokens + TITLE_MARGIN),
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    return tokenizer, config


class CausalTeacher(Teacher):
    family = "causal"

    def __init__(self, cfg: CausalTeacherParams, device: torch.device, module: CausalRecModule, tokenizer: Any):
        super().__init__(cfg, device)
        self.module, self.tokenizer = module, tokenizer

    @classmethod
    def create(cls, cfg: CausalTeacherParams, data: TeacherData) -> CausalTeacher:
        titles = data.require_titles("causal")
        dtype = resolve_dtype(cfg, device_of(cfg))
        if cfg.model.base_model is None:
            tokenizer, config = config_llama(cfg, titles)
            torch.manual_seed(cfg.train.seed)
            base: PreTrainedModel = LlamaForCausalLM(config).to(dtype)
        else:
            tokenizer, base = _pretrained(cfg, dtype)
        return cls.around(cfg, data, tokenizer, base)

    @classmethod
    def around(cls, cfg: CausalTeacherParams, data: TeacherData, tokenizer: Any, base: PreTrainedModel) -> CausalTeacher:
        """The teacher over a built causal LM and its tokenizer (what `create` loads or builds; the GPU
        check builds a 7B-shaped one on the device): `cfg.model.finetune` applied, the item table initialised
        from the LM's title embeddings."""
        device = device_of(cfg)
        pieces = PromptPieces.build(tokenizer, data.require_titles("causal"), cfg.model.max_title_tokens)
        lm = apply_finetune(base, cfg, default_targets=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM")
        module = CausalRecModule(lm, data.n_items, base.config.hidden_size).to(device)
        teacher = cls(cfg, device, module, tokenizer)
        module.eval()
        with torch.no_grad():
            table, _ = grounding.catalogue(module.phi, pieces, cfg.export.batch_size, device)
        module.init_items(table)
        log.info("causal teacher: %s, %d items, hidden %d, vocab %d, %d trainable parameters",
                 cfg.model.base_model or "config-built LLaMA", data.n_items, base.config.hidden_size, len(tokenizer),
                 sum(p.numel() for p in module.parameters() if p.requires_grad))
        return teacher

    def prompt_pieces(self, data: TeacherData) -> PromptPieces:
        return PromptPieces.build(self.tokenizer, data.require_titles("causal"), self.cfg.model.max_title_tokens)

    # ---- training -----------------------------------------------------------------------------------

    def fit(self, data: TeacherData, checkpoint_dir: Path, live_dir: Path, run_id: str) -> FitState:
        state = fit_accelerated(lambda accelerator: _Task(self, data, accelerator), self.device, self.cfg.train,
                                checkpoint_dir, live_dir, run_id)
        self.module.eval()
        return state

    # ---- persistence --------------------------------------------------------------------------------

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        save_backbone(self.module.lm, self.cfg, folder)
        self.tokenizer.save_pretrained(folder / "tokenizer")
        torch.save({"items": self.module.items.state_dict(), "head": self.module.head.state_dict()},
                   folder / "extras.pt")
        write_json(folder / "causal.json", {"n_items": self.module.items.num_embeddings - 1,
                                            "hidden": self.module.items.embedding_dim})

    @classmethod
    def load(cls, folder: Path, cfg: CausalTeacherParams) -> CausalTeacher:
        folder = Path(folder)
        meta_path = folder / "causal.json"
        if not meta_path.is_file():
            raise DataError(f"{folder} is not a saved causal teacher (no causal.json): re-run train_teacher")
        meta = json.loads(meta_path.read_text())
        device = device_of(cfg)
        dtype = resolve_dtype(cfg, device)
        tokenizer = from_pretrained(AutoTokenizer, str(folder / "tokenizer"))
        if _gguf(cfg.model.base_model) is not None and cfg.model.finetune == "lora":
            from peft import PeftModel

            lm = PeftModel.from_pretrained(_pretrained(cfg, dtype)[1], folder / "adapter")
        else:
            lm = load_backbone(AutoModelForCausalLM, cfg, folder, dtype)
        module = CausalRecModule(lm, meta["n_items"], meta["hidden"])
        load_extras(folder, {"items": module.items, "head": module.head})
        module.to(device).eval()
        return cls(cfg, device, module, tokenizer)

    # ---- export -------------------------------------------------------------------------------------

    def rank_states(self, states: torch.Tensor, k: int, batch_size: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top-k items (1-based) and log-probabilities of hidden states [E, H], and the projected states."""
        items, scores, projected = [], [], []
        table = self.module.items.weight[1:]
        for lo in range(0, len(states), batch_size):
            h = self.module.head(states[lo:lo + batch_size].to(self.device).float())
            top = torch.log_softmax(h @ table.T, dim=1).topk(k, dim=1)
            items.append(top.indices.cpu() + 1)
            scores.append(top.values.cpu())
            projected.append(h.cpu())
        return torch.cat(items).numpy(), torch.cat(scores).numpy(), torch.cat(projected).numpy()

    def export(self, data: TeacherData, examples: pl.DataFrame, cfg: CausalExportParams) -> ExportTables:
        users = examples["user_idx"].to_numpy().astype(np.int64)
        positions = examples["position"].to_numpy().astype(np.int64)
        k = min(cfg.top_k, data.n_items)
        pieces = self.prompt_pieces(data)
        self.module.eval()
        with torch.no_grad():
            if cfg.ranking == "scoring":
                return self._export_scoring(data, pieces, users, positions, k, cfg.batch_size)
            return self._export_grounding(data, pieces, users, positions, k, cfg)

    def _export_scoring(self, data: TeacherData, pieces: PromptPieces, users: np.ndarray, positions: np.ndarray,
                        k: int, batch_size: int) -> ExportTables:
        plan = WindowPlan.of(users, positions, self.cfg.model.max_history)
        states, passes = window_states(self.module.encode, pieces, data.split, plan, batch_size, self.device)
        items, scores, projected = self.rank_states(states, k, batch_size)
        log.info("scoring: %d examples from %d forward passes", len(users), passes)
        info = {"family": "causal", "ranking": "scoring", "score": SCORING_SCORE, "forward_passes": passes,
                "passes_per_example": passes / max(len(users), 1), "context": SCORING_CONTEXT,
                "item_embeddings": "the scoring item table E[1:]",
                "states": "head(h), h = last-layer state at the end of the last history item"}
        return ExportTables(topk=TopK(users, positions, items, scores),
                            item_embeddings=self.module.items.weight[1:].detach().float().cpu().numpy(),
                            states=States(users, positions, projected), info=info)

    def _export_grounding(self, data: TeacherData, pieces: PromptPieces, users: np.ndarray, positions: np.ndarray,
                          k: int, cfg: CausalExportParams) -> ExportTables:
        causal, split, batch_size = self.cfg.model, data.split, cfg.batch_size
        table, distinct = grounding.catalogue(self.module.phi, pieces, batch_size, self.device)
        _, _, train_targets = split.targets("train")
        order = grounding.tie_order(np.bincount(train_targets, minlength=data.n_items + 1)[1:])
        starts = split.flat(users, np.maximum(positions - causal.max_history, 0))
        ends = split.flat(users, positions)
        items, scores, states, stats, passes = [], [], [], [], 0
        for lo in tqdm(range(0, len(users), batch_size), desc="grounding", leave=False, disable=None):
            prompts = [pieces.prompt(split.items[a:b].tolist()) for a, b in zip(starts[lo:lo + batch_size],
                                                                                 ends[lo:lo + batch_size])]
            generated, steps = grounding.generate(self.module.lm, pieces, prompts, cfg.grounding_beams,
                                                  causal.max_title_tokens + TITLE_MARGIN, self.device)
            ids, mask = pad(prompts, pieces.pad_id, left=True)
            states.append(self.module.encode(ids.to(self.device), mask.to(self.device))[:, -1].float().cpu())
            query = grounding.embed(self.module.phi, pieces,
                                    grounding.title_ids(self.tokenizer, generated, causal.max_title_tokens),
                                    batch_size, self.device)
            top, score, dist = grounding.rank(query, table, order, k)
            items.append(top)
            scores.append(score)
            stats.append(grounding.row_stats(dist))
            passes += len(prompts) * (steps + 2)   # decoder steps, the prompt state, φ(generated title)
        log.info("grounding: %d examples from %d forward passes (+%d for the catalogue)", len(users), passes, distinct)
        info = {"family": "causal", "ranking": "grounding", "score": GROUNDING_SCORE, "forward_passes": passes,
                "passes_per_example": passes / max(len(users), 1), "catalogue_passes": distinct,
                "distinct_titles": distinct, "tie_break": TIE_BREAK, "context": GROUNDING_CONTEXT,
                "beams": cfg.grounding_beams, "distance": grounding.distance_summary(torch.cat(stats)),
                "item_embeddings": "φ(item title)",
                "states": "fine-tuned model's last-layer state at the prompt's end"}
        return ExportTables(topk=TopK(users, positions, torch.cat(items).numpy(), torch.cat(scores).numpy()),
                            item_embeddings=table.numpy(), states=States(users, positions, torch.cat(states).numpy()),
                            info=info)


class _Task(AcceleratedTask):
    """The Loop's view of a causal teacher: batches of BIGRec prompts, both losses, validation loss."""

    def __init__(self, teacher: CausalTeacher, data: TeacherData, accelerator: Any):
        cfg = teacher.cfg
        if cfg.train.gradient_checkpointing:
            _causal_lm(teacher.module.lm).activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": False})
        self.cfg, self.split = cfg, data.split
        self.pieces = teacher.prompt_pieces(data)
        self.device = accelerator.device
        train_users, train_positions, _ = data.split.targets("train")
        keep = _sample(len(train_users), cfg.train.sample, cfg.train.seed)
        self.train = train_users[keep], train_positions[keep]
        valid_users, valid_positions, _ = data.split.targets("valid")
        keep = _sample(len(valid_users), cfg.train.valid_examples, cfg.train.seed)
        self.valid = valid_users[keep], valid_positions[keep]
        if not len(self.train[0]) or not len(self.valid[0]):
            raise DataError("the causal teacher needs training and validation examples; the split has "
                            f"{len(self.train[0])} and {len(self.valid[0])}")
        teacher.module.to(self.device)
        teacher.device = self.device
        super().__init__(teacher.module, cfg.train, accelerator)

    def _batch(self, users: np.ndarray, positions: np.ndarray, every_item: bool) -> tuple[dict[str, torch.Tensor],
                                                                                          int, int]:
        """Model inputs for examples: prompt (last max_history items) + `"target title"` eos.

        The LM targets are the response tokens; the scoring targets are the next item after every
        history item piece (`every_item`), or after the last one only.
        """
        pieces, split, window = self.pieces, self.split, self.cfg.model.max_history
        seqs: list[list[int]] = []
        lm_at: list[tuple[int, int]] = []
        lm_targets: list[int] = []
        state_at: list[tuple[int, int]] = []
        state_targets: list[int] = []
        for row, (user, position) in enumerate(zip(users, positions)):
            base = split.offsets[user - 1]
            items = split.items[base + max(0, position - window):base + position + 1].tolist()
            ids, ends = pieces.history(items[:-1])
            ids += pieces.marker
            response = pieces.targets[items[-1]]
            lm_at += [(row, col) for col in range(len(ids) - 1, len(ids) + len(response) - 1)]
            lm_targets += response
            seqs.append(ids + response)
            chosen = ends if every_item else ends[-1:]
            state_at += [(row, col) for col in chosen]
            state_targets += items[len(items) - len(chosen):]
        ids, mask = pad(seqs, pieces.pad_id)
        tensors = {"ids": ids, "mask": mask, "lm_at": torch.as_tensor(lm_at).T,
                   "lm_targets": torch.as_tensor(lm_targets), "state_at": torch.as_tensor(state_at).T,
                   "state_targets": torch.as_tensor(state_targets)}
        return {name: t.to(self.device) for name, t in tensors.items()}, len(lm_targets), len(state_targets)

    def train_epoch(self, epoch: int) -> float:
        causal, train = self.cfg.model, self.cfg.train
        order = torch.randperm(len(self.train[0]), generator=epoch_generator(train.seed, epoch)).numpy()
        batches = [order[lo:lo + train.batch_size] for lo in range(0, len(order), train.batch_size)]
        mine = self.shard(batches)
        total, count = 0.0, 0
        for idx in tqdm(mine, desc=f"epoch {epoch}/{train.epochs}", leave=False, disable=None):
            inputs, tokens, states = self._batch(self.train[0][idx], self.train[1][idx], every_item=True)
            lm, scoring = self.wrapped(**inputs)
            loss = causal.lm_weight * lm / tokens + causal.scoring_weight * scoring / states
            self.step(loss)
            total += loss.item() * len(idx)
            count += len(idx)
        return total / max(count, 1)

    def validate(self) -> dict[str, float]:
        causal, size = self.cfg.model, self.cfg.train.batch_size
        lm = scoring = 0.0
        tokens = states = 0
        for lo in range(0, len(self.valid[0]), size):
            inputs, n_tokens, n_states = self._batch(self.valid[0][lo:lo + size], self.valid[1][lo:lo + size],
                                                     every_item=False)
            lm_sum, scoring_sum = self.module(**inputs)
            lm, scoring = lm + lm_sum.item(), scoring + scoring_sum.item()
            tokens, states = tokens + n_tokens, states + n_states
        lm, scoring = lm / tokens, scoring / states
        return {"valid_loss": causal.lm_weight * lm + causal.scoring_weight * scoring,
                "valid_lm_loss": lm, "valid_scoring_loss": scoring}
