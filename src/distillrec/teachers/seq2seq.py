"""POD-style T5 teacher (docs/methods.md §3.1): ids as words, whole-word embedding, prompt distillation.

Differences from POD, on purpose: pad labels are masked out of the loss (2.9 item 2); top-K comes
from beam search constrained to the catalogue (2.9 item 4; see `trie`); the epoch is selected on
the validation loss of the bare inputs that inference uses, with patience reset on improvement
(2.9 item 3); there is no top-N task (its 100-candidate prompts have no use in a full ranking).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from itertools import chain, zip_longest
from pathlib import Path

import numpy as np
import polars as pl
import torch
from accelerate import Accelerator
from tqdm import tqdm
from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutput

from distillrec.data.splitdata import SplitData
from distillrec.errors import DataError
from distillrec.hf import from_pretrained
from distillrec.params import Seq2SeqExportParams, Seq2SeqTeacherParams
from distillrec.teachers.accelerated import AcceleratedTask, fit_accelerated
from distillrec.teachers.backbone import apply_finetune, load_backbone, resolve_dtype, save_backbone
from distillrec.teachers.base import Teacher, device_of, load_extras
from distillrec.teachers.data import TeacherData
from distillrec.teachers.export import ExportTables, States, TopK
from distillrec.teachers.pod import (IGNORE, TEMPLATES, WHOLE_WORDS, Codec, PromptInputs, TaskExamples, input_texts,
                                     item_word, pad_right, sequential_text, target_texts, template_texts, user_word)
from distillrec.teachers.trie import ItemTrie, Step, beam_search
from distillrec.tokenizer import train_tokenizer
from distillrec.train.loop import FitState, epoch_generator

log = logging.getLogger(__name__)
SCORE = "sum of token log-probabilities of the item id under constrained beam search; higher = better"


class PODModel(torch.nn.Module):
    """T5 plus POD's whole-word embedding and per-task continuous prompts, as one module so that the
    training loop checkpoints every trainable part."""

    def __init__(self, backbone: torch.nn.Module, n_tasks: int, prompts_per_task: int):
        super().__init__()
        d_model = backbone.config.d_model
        self.backbone = backbone
        self.whole_word = torch.nn.Embedding(WHOLE_WORDS, d_model)  # N(0, 1) as in POD
        self.prompts = torch.nn.Embedding(n_tasks * prompts_per_task, d_model)
        torch.nn.init.uniform_(self.prompts.weight, -0.1, 0.1)
        self.prompts_per_task = prompts_per_task

    def extras(self) -> dict[str, torch.nn.Module]:
        return {"whole_word": self.whole_word, "prompts": self.prompts}

    def embed(self, inputs: PromptInputs, task: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder input: the task's P prompt vectors, then token + whole-word embeddings; mask grows by P."""
        tokens = self.backbone.get_input_embeddings()(inputs.input_ids) + self.whole_word(inputs.whole_word_ids)
        batch, p = tokens.shape[0], self.prompts_per_task
        rows = torch.arange(task * p, (task + 1) * p, device=tokens.device)
        prompt = self.prompts(rows).to(tokens.dtype).expand(batch, -1, -1)
        mask = inputs.attention_mask
        return torch.cat([prompt, tokens], 1), torch.cat([mask.new_ones(batch, p), mask], 1)

    def encode(self, inputs: PromptInputs, task: int) -> tuple[torch.Tensor, torch.Tensor]:
        embeds, mask = self.embed(inputs, task)
        return self.backbone.get_encoder()(inputs_embeds=embeds, attention_mask=mask).last_hidden_state, mask

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, whole_word_ids: torch.Tensor,
                labels: torch.Tensor, task: int) -> torch.Tensor:
        """Mean token cross-entropy of `labels` (IGNORE positions skipped), teacher-forced."""
        embeds, mask = self.embed(PromptInputs(input_ids, attention_mask, whole_word_ids), task)
        return self.backbone(inputs_embeds=embeds, attention_mask=mask, labels=labels, use_cache=False).loss


def _task_examples(data: TeacherData, task: str, split: str) -> TaskExamples:
    if task == "sequential":
        users, positions, items = data.split.targets(split)
        return TaskExamples(task, users, positions, items)
    rows = data.explanations.filter(pl.col("split") == split)
    return TaskExamples(task, rows["user_idx"].to_numpy().astype(np.int64),
                        rows["position"].to_numpy().astype(np.int64), rows["item_idx"].to_numpy().astype(np.int64),
                        rows["explanation"].to_list())


def _subset(examples: TaskExamples, n: int | None, seed: int) -> TaskExamples:
    """A fixed random subset of at most n examples, in the original order."""
    if n is None or len(examples) <= n:
        return examples
    return examples.subset(np.sort(np.random.default_rng(seed).choice(len(examples), n, replace=False)))


class _Training(AcceleratedTask):
    """The Loop's EpochTask: task-alternated batches (each batch one task), validation loss on bare inputs.

    Every training example of each task once per epoch (`train.sample` caps each task's examples).
    """

    def __init__(self, teacher: Seq2SeqTeacher, data: TeacherData, accelerator: Accelerator):
        cfg = teacher.cfg
        self.teacher, self.data, self.cfg = teacher, data, cfg
        self.train = {}
        for task in cfg.model.tasks:
            examples = _task_examples(data, task, "train")
            if len(examples):
                self.train[task] = _subset(examples, cfg.train.sample, cfg.train.seed)
            else:
                log.warning("the dataset has no review text: the %s task is skipped", task)
        self.tasks = list(self.train)
        self.valid = {t: _subset(_task_examples(data, t, "valid"), cfg.train.valid_examples, cfg.train.seed)
                      for t in self.tasks}
        super().__init__(teacher.module, cfg.train, accelerator)
        log.info("training on %s examples", {t: len(e) for t, e in self.train.items()})

    def _batches(self, generator: torch.Generator) -> list[tuple[str, np.ndarray]]:
        size = self.cfg.train.batch_size
        per_task = []
        for task in self.tasks:
            order = torch.randperm(len(self.train[task]), generator=generator).numpy()
            per_task.append([(task, order[i:i + size]) for i in range(0, len(order), size)])
        return [b for b in chain.from_iterable(zip_longest(*per_task)) if b is not None]

    def train_epoch(self, epoch: int) -> float:
        generator = epoch_generator(self.cfg.train.seed, epoch)
        batches = self._batches(generator)
        mine = self.shard(batches)
        total, seen = 0.0, 0
        for task, index in tqdm(mine, desc=f"epoch {epoch}/{self.cfg.train.epochs}", leave=False, disable=None):
            n_templates = len(TEMPLATES[task])
            templates = torch.randint(n_templates, (len(index),), generator=generator).tolist()
            inputs, labels = self.teacher.batch(self.data.split, self.train[task], index, templates,
                                                self.accelerator.device)
            with self.teacher.autocast():
                loss = self.wrapped(inputs.input_ids, inputs.attention_mask, inputs.whole_word_ids, labels,
                                    self.teacher.task_index(task))
            self.step(loss)
            total += loss.item() * len(index)
            seen += len(index)
        return total / max(seen, 1)

    def validate(self) -> dict[str, float]:
        """Token-mean teacher-forced loss per task on validation examples; `valid_loss` = their mean."""
        out = {}
        for task, examples in self.valid.items():
            loss_sum, tokens = 0.0, 0
            for start in range(0, len(examples), self.cfg.train.batch_size):
                index = np.arange(start, min(start + self.cfg.train.batch_size, len(examples)))
                inputs, labels = self.teacher.batch(self.data.split, examples, index, None, self.accelerator.device)
                with self.teacher.autocast():
                    loss = self.module(inputs.input_ids, inputs.attention_mask, inputs.whole_word_ids, labels,
                                       self.teacher.task_index(task))
                n = int((labels != IGNORE).sum())
                loss_sum, tokens = loss_sum + loss.item() * n, tokens + n
            out[f"valid_loss_{task}"] = loss_sum / max(tokens, 1)
        out["valid_loss"] = float(np.mean(list(out.values())))
        return out


class Seq2SeqTeacher(Teacher):
    """POD on T5: sequential recommendation (and explanation generation) as text-to-text."""

    family = "seq2seq"

    def __init__(self, cfg: Seq2SeqTeacherParams, device: torch.device, module: PODModel, tokenizer):
        super().__init__(cfg, device)
        self.module = module.to(device)
        self.tokenizer = tokenizer
        self.codec = Codec(tokenizer)
        self.dtype = resolve_dtype(cfg, device)

    # -- building ---------------------------------------------------------------------------------

    @classmethod
    def create(cls, cfg: Seq2SeqTeacherParams, data: TeacherData) -> Seq2SeqTeacher:
        if "sequential" not in cfg.model.tasks:
            raise DataError("seq2seq.tasks must include sequential: the export lists top-K items")
        torch.manual_seed(cfg.train.seed)
        if cfg.model.base_model is None:
            tokenizer = train_tokenizer(cls._tokenizer_texts(data), cfg.model.config.vocab_size, "<pad>", "</s>", "<unk>")
            c = cfg.model.config
            backbone = T5ForConditionalGeneration(T5Config(
                vocab_size=len(tokenizer), d_model=c.d_model, d_kv=c.d_model // c.heads, d_ff=c.d_ff,
                num_layers=c.layers, num_decoder_layers=c.layers, num_heads=c.heads,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                decoder_start_token_id=tokenizer.pad_token_id))
            if cfg.model.finetune == "lora":
                log.warning("LoRA on a backbone built from config trains adapters over random weights")
        else:
            tokenizer = from_pretrained(AutoTokenizer, cfg.model.base_model)
            backbone = from_pretrained(T5ForConditionalGeneration, cfg.model.base_model)
        backbone = apply_finetune(backbone, cfg, default_targets=["q", "v"], task_type="SEQ_2_SEQ_LM")
        module = PODModel(backbone, len(cfg.model.tasks), cfg.model.prompts_per_task)
        return cls(cfg, device_of(cfg), module, tokenizer)

    @staticmethod
    def _tokenizer_texts(data: TeacherData) -> Iterator[str]:
        """Id words of all users and items, each user's training sequence as a bare input (so id pieces
        are as frequent as in training), the templates and the training explanations (not test text)."""
        split = data.split
        yield from (user_word(u) for u in range(1, split.n_users + 1))
        yield from (item_word(i) for i in range(1, data.n_items + 1))
        for user in range(1, split.n_users + 1):
            yield sequential_text(TEMPLATES["sequential"][0], user, data.sequence(user)[:-2].tolist())
        yield from template_texts()
        yield from data.explanations.filter(pl.col("split") == "train")["explanation"]

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        save_backbone(self.module.backbone, self.cfg, folder)
        self.tokenizer.save_pretrained(folder / "tokenizer")
        torch.save({name: m.state_dict() for name, m in self.module.extras().items()}, folder / "extras.pt")

    @classmethod
    def load(cls, folder: Path, cfg: Seq2SeqTeacherParams) -> Seq2SeqTeacher:
        folder = Path(folder)
        tokenizer = from_pretrained(AutoTokenizer, str(folder / "tokenizer"))
        backbone = load_backbone(T5ForConditionalGeneration, cfg, folder, torch.float32)
        module = PODModel(backbone, len(cfg.model.tasks), cfg.model.prompts_per_task)
        load_extras(folder, module.extras())
        module.eval()
        return cls(cfg, device_of(cfg), module, tokenizer)

    # -- shared by training and export ------------------------------------------------------------

    def task_index(self, task: str) -> int:
        return self.cfg.model.tasks.index(task)

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 compute over fp32 weights (pure-bf16 T5 weights would lose small AdamW updates)."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.dtype == torch.bfloat16)

    def inputs(self, split: SplitData, examples: TaskExamples, index: np.ndarray,
               templates: list[int] | None) -> PromptInputs:
        """Encoder inputs of `examples[index]`; histories are the last max_history items before the target."""
        histories = None
        if examples.task == "sequential":
            histories = split.histories(examples.users[index], examples.positions[index],
                                        self.cfg.model.max_history)
        return self.codec.inputs(input_texts(examples, index, histories, templates))

    def batch(self, split: SplitData, examples: TaskExamples, index: np.ndarray, templates: list[int] | None,
              device: torch.device) -> tuple[PromptInputs, torch.Tensor]:
        """Inputs and labels (item id word, or explanation cut to explanation_tokens; then eos; pads -100)."""
        labels = self.codec.labels(target_texts(examples, index), self.cfg.model.explanation_tokens)
        return self.inputs(split, examples, index, templates).to(device), labels.to(device)

    def fit(self, data: TeacherData, checkpoint_dir: Path, live_dir: Path, run_id: str) -> FitState:
        if self.cfg.train.gradient_checkpointing:
            self.module.backbone.activation_checkpointing_enable()

        def task_on(accelerator: Accelerator) -> _Training:
            self.device = accelerator.device
            return _Training(self, data, accelerator)

        return fit_accelerated(task_on, self.device, self.cfg.train, checkpoint_dir, live_dir, run_id)

    # -- export -----------------------------------------------------------------------------------

    def beams(self, cfg: Seq2SeqExportParams) -> int:
        """export.beams, at least top_k."""
        return max(cfg.beams or cfg.top_k, cfg.top_k)

    def item_trie(self, n_items: int) -> ItemTrie:
        """Every item's id-word tokens + eos: the only sequences top-K decoding may produce."""
        return ItemTrie.build(self.codec.target_ids([item_word(i) for i in range(1, n_items + 1)]),
                              list(range(1, n_items + 1)))

    def decoder_step(self, hidden: torch.Tensor, mask: torch.Tensor, beams: int) -> Step:
        """One cached decoder step for every beam of every example.

        The first step decodes each example once (all its beams hold the start token) and copies the
        cache per beam, so the cross-attention keys/values are projected once, not once per beam;
        they are equal across an example's beams, so later steps reorder the self-attention cache only.
        """
        backbone, batch = self.module.backbone, hidden.shape[0]
        encoder = (hidden.repeat_interleave(beams, 0),)
        encoder_mask = mask.repeat_interleave(beams, 0)
        cache = None

        def step(tokens: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
            nonlocal cache
            if cache is None:
                out = backbone(encoder_outputs=(hidden,), attention_mask=mask,
                               decoder_input_ids=tokens.view(batch, beams)[:, :1], use_cache=True)
                cache = out.past_key_values
                cache.batch_repeat_interleave(beams)
                return torch.log_softmax(out.logits[:, -1].float(), dim=-1).repeat_interleave(beams, 0)
            cache.self_attention_cache.reorder_cache(order)
            out = backbone(encoder_outputs=encoder, attention_mask=encoder_mask, decoder_input_ids=tokens[:, None],
                           past_key_values=cache, use_cache=True)
            return torch.log_softmax(out.logits[:, -1].float(), dim=-1)

        return step

    def item_embeddings(self, n_items: int) -> np.ndarray:
        """Item i's row: the mean input-token embedding of its id word `item_<i>` (no whole-word term)."""
        ids = [r[:-1] for r in self.codec.target_ids([item_word(i) for i in range(1, n_items + 1)])]
        padded = pad_right(ids, 0).to(self.device)
        mask = pad_right([[1] * len(r) for r in ids], 0).to(self.device).unsqueeze(-1)
        table = self.module.backbone.get_input_embeddings()(padded).float()
        return ((table * mask).sum(1) / mask.sum(1)).cpu().numpy()

    def top_k(self, data: TeacherData, examples: pl.DataFrame, cfg: Seq2SeqExportParams
              ) -> tuple[TopK, States]:
        """Constrained beam search over the bare sequential input; the state is the mean encoder output."""
        k, beams = cfg.top_k, self.beams(cfg)
        if k > data.n_items:
            raise DataError(f"export.top_k ({k}) exceeds the number of items ({data.n_items})")
        trie = self.item_trie(data.n_items).to(self.device)
        start_token = self.module.backbone.config.decoder_start_token_id
        users = examples["user_idx"].to_numpy().astype(np.int64)
        positions = examples["position"].to_numpy().astype(np.int64)
        rows = TaskExamples("sequential", users, positions, np.zeros_like(users))
        items = np.zeros((len(users), k), np.int64)
        scores = np.zeros((len(users), k), np.float32)
        states = np.zeros((len(users), self.module.backbone.config.d_model), np.float32)
        task = self.task_index("sequential")
        for start in tqdm(range(0, len(users), cfg.batch_size), desc="top-K", disable=None):
            index = np.arange(start, min(start + cfg.batch_size, len(users)))
            inputs = self.inputs(data.split, rows, index, None).to(self.device)
            with self.autocast():
                hidden, mask = self.module.encode(inputs, task)
                weights = mask.unsqueeze(-1).float()
                states[index] = ((hidden.float() * weights).sum(1) / weights.sum(1)).cpu().numpy()
                top, score = beam_search(self.decoder_step(hidden, mask, beams), trie, len(index), beams, k,
                                         start_token)
            items[index], scores[index] = top.cpu().numpy(), score.cpu().numpy()
        return TopK(users, positions, items, scores), States(users, positions, states)

    def explanations(self, data: TeacherData, cfg: Seq2SeqExportParams) -> pl.DataFrame | None:
        """Beam-search explanations of the test examples that have a reference, from `user_u item_i`."""
        if "explanation" not in self.cfg.model.tasks:
            return None
        test = _task_examples(data, "explanation", "test")
        if not len(test):
            return None
        s2s = self.cfg.model
        task, generated = self.task_index("explanation"), []
        backbone = self.module.backbone
        for start in tqdm(range(0, len(test), cfg.batch_size), desc="explanations", disable=None):
            index = np.arange(start, min(start + cfg.batch_size, len(test)))
            inputs = self.inputs(data.split, test, index, None).to(self.device)
            with self.autocast():
                hidden, mask = self.module.encode(inputs, task)
                out = backbone.generate(encoder_outputs=BaseModelOutput(last_hidden_state=hidden),
                                        attention_mask=mask, num_beams=cfg.explanation_beams,
                                        max_new_tokens=s2s.explanation_tokens + 5, do_sample=False,
                                        decoder_start_token_id=backbone.config.decoder_start_token_id,
                                        eos_token_id=self.codec.eos, pad_token_id=self.codec.pad)
            generated += self.codec.decode(out)
        references = self.codec.decode(self.codec.target_ids(test.texts, s2s.explanation_tokens))
        return pl.DataFrame({"user_idx": test.users.astype(np.int32), "position": test.positions.astype(np.int32),
                             "item_idx": test.items.astype(np.int32), "generated": generated,
                             "reference": references})

    def export(self, data: TeacherData, examples: pl.DataFrame, cfg: Seq2SeqExportParams) -> ExportTables:
        self.module.eval()
        with torch.no_grad():
            topk, states = self.top_k(data, examples, cfg)
            explanations = self.explanations(data, cfg)
            embeddings = self.item_embeddings(data.n_items)
        d_model = self.module.backbone.config.d_model
        info = {"family": self.family, "score": SCORE, "d_model": d_model,
                "beams": self.beams(cfg), "prompts_per_task": self.cfg.model.prompts_per_task,
                "max_history": self.cfg.model.max_history,
                "item_embedding": "mean input token embedding of the id word item_<i>",
                "state": "mean encoder output (prompt + tokens) of the bare sequential input"}
        return ExportTables(topk, embeddings, states, explanations, info)
