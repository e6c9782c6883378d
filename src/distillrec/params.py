"""Typed, validated view of params.yaml.

Every stage validates the whole file at start-up, so a typo anywhere fails fast with the key's
dotted path and the allowed values instead of surfacing as a KeyError deep in a run.
"""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from distillrec.errors import ParamsError

PARAMS_FILE = Path("params.yaml")
TEACHER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]*")


class Section(BaseModel):
    """Strict base: unknown keys and loose types are errors."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)  # .inf / .nan: errors


class SyntheticParams(Section):
    """Size and shape of the offline synthetic dataset."""

    seed: int = 0
    n_users: int = Field(700, ge=10)
    n_items: int = Field(1400, ge=10)
    n_clusters: int = Field(16, ge=1, le=16)
    min_length: int = Field(5, ge=3)
    max_length: int = Field(20, ge=3)
    successors: int = Field(3, ge=1, description="Likely next items per item (sequential signal).")
    p_successor: float = Field(0.6, ge=0.0, le=1.0)
    p_cluster: float = Field(0.3, ge=0.0, le=1.0)
    zipf_exponent: float = Field(1.0, ge=0.0)

    @model_validator(mode="after")
    def _check(self) -> SyntheticParams:
        if self.min_length > self.max_length:
            raise ValueError("min_length must be <= max_length")
        if self.p_successor + self.p_cluster > 1.0:
            raise ValueError("p_successor + p_cluster must be <= 1")
        return self


class AmazonParams(Section):
    """Which Amazon release and review file to read."""

    version: Literal[2014, 2018, 2023] = 2018
    five_core: bool = Field(
        True, description="2014/2018: read the published 5-core review file (<Cat>_5); 2023: ignored"
    )


class DatasetParams(Section):
    source: Literal["synthetic", "movielens", "amazon", "recbole", "sequences", "lcrec", "unisrec"] = "synthetic"
    name: str = Field("synthetic", min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    path: str | None = Field(None, description="Raw-file folder; default data/raw/<name>")
    synthetic: SyntheticParams = SyntheticParams()
    amazon: AmazonParams = AmazonParams()

    @property
    def raw_dir(self) -> Path:
        return Path(self.path) if self.path else Path("data/raw") / self.name


class IngestParams(Section):
    on_bad_line: Literal["error", "skip"] = "error"
    download: bool = Field(True, description="Download public datasets when raw files are absent")


class SplitParams(Section):
    min_rating: float | None = Field(None, description="Drop interactions rated below this")
    drop_consecutive_duplicates: bool = False
    user_core: int = Field(5, ge=0, description="Iterative k-core: min interactions per user")
    item_core: int = Field(0, ge=0, description="Iterative k-core: min interactions per item")


class CaserParams(Section):
    horizontal_filters: int = Field(16, ge=1, description="Filters per height (paper n_h)")
    vertical_filters: int = Field(4, ge=1, description="Paper n_v")
    window: int = Field(5, ge=2, description="Last L items the convolutions see (paper L)")


class Bert4RecParams(Section):
    mask_prob: float = Field(0.2, gt=0.0, lt=1.0)


class StudentParams(Section):
    """Architecture of the student; sizes shared by all models, extras per model."""

    model: Literal["sasrec", "gru4rec", "caser", "bert4rec"] = "sasrec"
    hidden: int = Field(64, ge=4)
    layers: int = Field(2, ge=1)
    heads: int = Field(2, ge=1)
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    max_length: int = Field(50, ge=2, description="Longest history the model reads")
    caser: CaserParams = CaserParams()
    bert4rec: Bert4RecParams = Bert4RecParams()

    @model_validator(mode="after")
    def _check(self) -> StudentParams:
        if self.model in ("sasrec", "bert4rec") and self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        return self


METRICS = ("hr", "ndcg", "mrr")


def _check_metric(name: str) -> str:
    metric, _, k = name.partition("@")
    if metric not in METRICS or not k.isdigit() or int(k) < 1:
        raise ValueError(f"expected <{'|'.join(METRICS)}>@<K>, e.g. ndcg@10, got {name!r}")
    return name


class ObjectiveFields(Section):
    """The loss of a student-architecture model (students; id, text and fusion teachers) and how its
    training windows are batched (docs/methods.md §5)."""

    objective: Literal["ce", "bce", "sampled_softmax", "gbce"] = Field(
        "ce", description="ce: softmax over the full catalogue; bce: per-target sampled negatives; "
                          "sampled_softmax / gbce: negatives shared by the batch (large catalogues)")
    negatives: int = Field(1, ge=1, description="bce: negatives per target; sampled_softmax/gbce: per batch")
    sampler: Literal["uniform", "popularity"] = Field(
        "uniform", description="sampled_softmax: uniform, or by training popularity with logQ correction")
    gbce_t: float = Field(0.75, ge=0.0, le=1.0, description="gbce calibration t (gSASRec; 0 = plain BCE)")
    batching: Literal["shuffle", "bucketed"] = Field(
        "shuffle", description="bucketed: windows of similar length share a batch (less padding)")

    @model_validator(mode="after")
    def _check_objective(self) -> ObjectiveFields:
        if self.objective in ("sampled_softmax", "gbce") and self.negatives < 2:
            raise ValueError(f"objective {self.objective} shares `negatives` across the batch: "
                             f"negatives={self.negatives} is too few (e.g. 256)")
        if self.sampler == "popularity" and self.objective != "sampled_softmax":
            raise ValueError(f"sampler: popularity applies to objective sampled_softmax, not {self.objective}")
        return self


STUDENT_TRAINING = tuple(ObjectiveFields.model_fields)
LrSchedule = Literal["constant", "cosine"]
LR_SCHEDULE = Field("constant", description="cosine: the lr decays to 0 over `epochs` (per step); "
                                            "validation still selects the epoch")


class TrainParams(ObjectiveFields):
    """Optimisation of a student; model selection uses the validation split only."""

    lr: float = Field(3e-3, gt=0.0)
    lr_schedule: LrSchedule = LR_SCHEDULE
    weight_decay: float = Field(0.0, ge=0.0)
    batch_size: int = Field(64, ge=1, description="Training windows per step")
    window_stride: int | None = Field(
        None, ge=1, description="Positions between training windows; null = student.max_length")
    epochs: int = Field(200, ge=1)
    patience: int = Field(5, ge=1, description="Epochs without validation gain before stopping")
    select_metric: str = "ndcg@10"
    seeds: list[int] = Field([42], min_length=1, description="The DAG trains every student once per seed")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = Field(0, ge=0, description="torch CPU threads; 0 = torch's default")
    eval_batch_size: int = Field(1024, ge=1)

    @model_validator(mode="after")
    def _check(self) -> TrainParams:
        _check_metric(self.select_metric)
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds has duplicates: {self.seeds}")
        return self


class LoraParams(Section):
    """peft LoRA on the base model (teacher.finetune: lora)."""

    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | None = Field(
        None, description="null = the family default: T5 q,v; causal q_proj,k_proj,v_proj,o_proj; "
                          "text: peft's default for the encoder's architecture (BERT query,value)")


class ModelConfigParams(Section):
    """Sizes of a teacher built from a config (base_model: null), with a tokenizer trained on the data."""

    d_model: int = Field(64, ge=8)
    layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    d_ff: int = Field(128, ge=8)
    vocab_size: int = Field(1000, ge=64, description="Size of the tokenizer trained on the dataset text")

    @model_validator(mode="after")
    def _check(self) -> ModelConfigParams:
        if self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by heads ({self.heads})")
        return self


TextField = Literal["title", "categories", "brand", "description"]


class EmbedConfigParams(Section):
    """Sizes of the BERT built when embed.<name>.model is null (random init, seeded)."""

    hidden: int = Field(64, ge=8)
    layers: int = Field(2, ge=1)
    heads: int = Field(2, ge=1)
    intermediate: int = Field(128, ge=8)
    vocab_size: int = Field(2000, ge=64, description="Size of the tokenizer trained on the catalogue's text")
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> EmbedConfigParams:
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        return self


class EmbedParams(Section):
    """One `embed_items@<name>`: a pretrained LM run once over every item's text -> item vectors."""

    model: str | None = Field(None, description="HF id, folder, .gguf file (decoder), or package:<module>/<zip> "
                                                "(weights inside an installed Python package); null = a small BERT "
                                                "built from `config` (an offline stand-in)")
    sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$",
                               description="package: models: sha256 of the weights file in the zip, checked "
                                           "before loading")
    kind: Literal["encoder", "decoder"] = Field(
        "encoder", description="encoder: AutoModel (T5: its encoder); decoder: AutoModelForCausalLM's last layer")
    pooling: Literal["mean", "last"] = Field("mean", description="mean: masked mean over tokens; "
                                                                 "last: the last real token (decoders)")
    prompt: str | None = Field(None, description="Template with {text}, e.g. 'Item: {text}. In one word:'")
    fields: list[TextField] = Field(
        list(typing.get_args(TextField)), min_length=1, description="Item text: these item_map fields, in this order")
    max_tokens: int = Field(64, ge=1, description="The item text is cut to this many tokens before the prompt")
    batch_size: int = Field(64, ge=1)
    chunk_items: int = Field(1024, ge=1, description="Items per resumable chunk (a checkpoint file)")
    normalize: bool = Field(False, description="L2-normalise the vectors")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 on CUDA, fp32 on CPU")
    threads: int = Field(0, ge=0, description="torch CPU threads; 0 = torch's default")
    config: EmbedConfigParams = EmbedConfigParams()

    @model_validator(mode="after")
    def _check(self) -> EmbedParams:
        if self.prompt is not None and "{text}" not in self.prompt:
            raise ValueError(f"prompt must contain {{text}} where the item text goes (got {self.prompt!r})")
        if len(set(self.fields)) != len(self.fields):
            raise ValueError(f"fields has duplicates: {self.fields}")
        if self.model is None and self.kind != "encoder":
            raise ValueError("model null builds a small BERT encoder: set kind: encoder (or name a decoder model)")
        packaged = self.model is not None and self.model.startswith("package:")
        if packaged and self.sha256 is None:
            raise ValueError(f"model {self.model!r} comes from a Python package: set sha256 to the digest of its "
                             f"weights file, which is checked before loading")
        if self.sha256 is not None and not packaged:
            raise ValueError("sha256 is checked for package: models only (a folder or hub id pins itself)")
        if self.model is not None and self.model.endswith(".gguf") and self.kind != "decoder":
            raise ValueError(f"a .gguf file is loaded as a causal LM: set kind: decoder (model {self.model!r})")
        return self


# ------------------------------------------------------------------------------------------------ teachers
# One class per family, discriminated on `family`; each holds only what its family reads (an unused key is
# an error, Section forbids extras). Every member has the same four keys, so dvc.yaml declares one fixed
# list: train_teacher `family`, `model`, `train`; export_teacher the whole section.


class TeacherTrainFields(Section):
    """Optimisation every teacher family shares; the epoch is selected on the validation split."""

    lr: float = Field(3e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    batch_size: int = Field(32, ge=1)
    epochs: int = Field(3, ge=1)
    patience: int = Field(2, ge=1, description="Epochs without validation gain before stopping")
    seed: int = 42
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = Field(0, ge=0, description="torch CPU threads; 0 = torch's default")


class LLMTrainParams(TeacherTrainFields):
    """Training of a seq2seq or causal teacher (their own losses); the epoch is selected on the validation loss."""

    sample: int | None = Field(1000, ge=1, description="Train on a random sample of N examples per task "
                                                       "(BIGRec: 1024); null = all")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 on CUDA, fp32 on CPU")
    gradient_checkpointing: bool = False
    valid_examples: int | None = Field(512, ge=1, description="Validation examples per epoch; null = all")


class ModelTrainParams(ObjectiveFields, TeacherTrainFields):
    """Training of a teacher built on a student architecture (id, fusion): the students' trainer,
    objectives and validation selection."""

    lr_schedule: LrSchedule = LR_SCHEDULE
    batch_size: int = Field(128, ge=1, description="Training windows per step")
    epochs: int = Field(40, ge=1)
    patience: int = Field(5, ge=1, description="Epochs without validation gain before stopping")
    window_stride: int | None = Field(None, ge=1, description="As train.window_stride; null = model.max_length")


class TextTrainParams(ModelTrainParams):
    """Training of a text teacher: the students' trainer, plus the encoder's precision and lr."""

    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 on CUDA, fp32 on CPU")
    encoder_lr: float | None = Field(None, gt=0.0, description="AdamW lr of the encoder's trainable weights "
                                                               "(lora/full); null = lr")


class TeacherExportParams(Section):
    """Which examples the teacher scores: changing these re-runs the export, not training (families id,
    text, fusion; seq2seq and causal add their own)."""

    top_k: int = Field(50, ge=1)
    train_positions: Literal["all"] | int = Field(
        "all", description="all training examples, or the last N training positions of each user")
    batch_size: int = Field(64, ge=1)


class Seq2SeqExportParams(TeacherExportParams):
    beams: int | None = Field(None, ge=1, description="Beams for the constrained top-K search; null = top_k")
    explanation_beams: int = Field(4, ge=1, description="Beams for explanations")

    @model_validator(mode="after")
    def _check(self) -> Seq2SeqExportParams:
        if self.beams is not None and self.beams < self.top_k:
            raise ValueError(f"beams ({self.beams}) must be >= top_k ({self.top_k})")
        return self


class CausalExportParams(TeacherExportParams):
    ranking: Literal["scoring", "grounding"] = Field(
        "scoring", description="scoring (one pass per user) | grounding (BIGRec: generate, embed, nearest titles)")
    grounding_beams: int = Field(4, ge=1, description="grounding: beams for the generated title")


class PretrainedFields(Section):
    """Where a teacher's language model comes from and which of its weights train."""

    base_model: str | None = Field(None, description="HF id or local folder; null = built from `config`")
    finetune: Literal["lora", "full"] = Field("full", description="lora (peft: adapter weights only) | full")
    lora: LoraParams = LoraParams()


class LLMModelFields(PretrainedFields):
    config: ModelConfigParams = Field(ModelConfigParams(), description="Sizes when base_model is null; "
                                                                      "the tokenizer is trained on the dataset text")


class Seq2SeqModelParams(LLMModelFields):
    """POD-style T5 teacher (docs/methods.md §3.1)."""

    tasks: list[Literal["sequential", "explanation"]] = Field(["sequential", "explanation"], min_length=1)
    prompts_per_task: int = Field(3, ge=1, description="Continuous prompt vectors per task (POD P)")
    max_history: int = Field(20, ge=1, description="Most recent items in the input")
    explanation_tokens: int = Field(20, ge=1, description="Reference explanations truncated to this")

    @model_validator(mode="after")
    def _check(self) -> Seq2SeqModelParams:
        if "sequential" not in self.tasks:
            raise ValueError("tasks must include 'sequential': the export ranks items with it")
        return self


class CausalModelParams(LLMModelFields):
    """BIGRec-style causal-LM teacher (docs/methods.md §3.2)."""

    max_history: int = Field(10, ge=1, description="Most recent items listed in the prompt")
    lm_weight: float = Field(1.0, ge=0.0, description="Weight of the next-title LM loss")
    scoring_weight: float = Field(1.0, ge=0.0, description="Weight of the softmax loss on item-end states")
    max_title_tokens: int = Field(32, ge=1, description="Titles are cut to this many tokens")

    @model_validator(mode="after")
    def _check(self) -> CausalModelParams:
        if self.lm_weight == 0 and self.scoring_weight == 0:
            raise ValueError("lm_weight and scoring_weight cannot both be 0")
        return self


class IdModelParams(StudentParams):
    """A large ID-based sequential model as a teacher: a student architecture, bigger."""

    hidden: int = Field(128, ge=4)
    layers: int = Field(3, ge=1)
    heads: int = Field(4, ge=1)
    max_length: int = Field(100, ge=2)


class SASRecFields(Section):
    """The SASRec that reads the text and fusion teachers' item tables."""

    hidden: int = Field(64, ge=4)
    layers: int = Field(2, ge=1)
    heads: int = Field(2, ge=1)
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    max_length: int = Field(50, ge=2, description="Longest history the SASRec reads")

    @model_validator(mode="after")
    def _check_heads(self) -> SASRecFields:
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        return self


class TextModelParams(SASRecFields):
    """UniSRec-like teacher: items are a text encoder's view of their text, read by a SASRec."""

    base_model: str = Field(description="HF id or folder of a text encoder (e.g. sentence-transformers/all-MiniLM-L6-v2)")
    finetune: Literal["lora", "full", "frozen"] = Field(
        "lora", description="frozen: the encoder is not trained, items are encoded once")
    lora: LoraParams = LoraParams()
    fields: list[TextField] = Field(
        list(typing.get_args(TextField)), min_length=1, description="Item text: these item_map fields, in this order")
    max_text_tokens: int = Field(64, ge=2, description="An item's text is cut to this many tokens")
    encode_batch_size: int = Field(128, ge=1, description="Items per encoder call in a catalogue pass")
    grad_items: int | None = Field(
        256, ge=1, description="Batch items re-encoded with gradient per step (a random subset); null = all")
    adaptor_experts: int = Field(8, ge=1, description="Whitening experts of UniSRec's MoE adaptor")
    adaptor_dropout: float = Field(0.0, ge=0.0, lt=1.0,
                                   description="Dropout on the experts' input (UniSRec 0.2; no gain on ml-100k)")

    @model_validator(mode="after")
    def _check(self) -> TextModelParams:
        if len(set(self.fields)) != len(self.fields):
            raise ValueError(f"fields has duplicates: {self.fields}")
        return self


class FusionModelParams(SASRecFields):
    """Collaborative + language knowledge: item = ID embedding + adapted LM vector (embed_items@embedding)."""

    embedding: str = Field(description="Name of the `embed` entry whose item vectors the teacher reads")
    ids: bool = Field(True, description="Add a trainable ID embedding to the adapted LM vector (false = text-only "
                                        "ablation: what family text is, from the stored vectors)")
    adaptor_experts: int = Field(8, ge=1, description="Whitening experts of UniSRec's MoE adaptor")
    adaptor_dropout: float = Field(0.2, ge=0.0, lt=1.0, description="Dropout on the LM vectors (UniSRec 0.2)")
    dropout: float = Field(0.3, ge=0.0, lt=1.0)


class _WindowedTeacher(Section):
    """A teacher trained on windows of its model's max_length (id, text, fusion)."""

    @model_validator(mode="after")
    def _check_stride(self) -> _WindowedTeacher:
        stride, length = self.train.window_stride, self.model.max_length  # type: ignore[attr-defined]
        if stride is not None and stride > length:
            raise ValueError(f"train.window_stride ({stride}) must be <= model.max_length ({length})")
        return self


class Seq2SeqTeacherParams(Section):
    """POD-style T5 teacher."""

    family: Literal["seq2seq"] = "seq2seq"
    model: Seq2SeqModelParams = Seq2SeqModelParams()
    train: LLMTrainParams = LLMTrainParams()
    export: Seq2SeqExportParams = Seq2SeqExportParams()


class CausalTeacherParams(Section):
    """BIGRec-style causal LM teacher (LLaMA, Qwen, ...)."""

    family: Literal["causal"] = "causal"
    model: CausalModelParams = CausalModelParams()
    train: LLMTrainParams = LLMTrainParams()
    export: CausalExportParams = CausalExportParams()


class IdTeacherParams(_WindowedTeacher):
    """A large ID-based model (a student architecture, bigger)."""

    family: Literal["id"] = "id"
    model: IdModelParams = IdModelParams()
    train: ModelTrainParams = ModelTrainParams()
    export: TeacherExportParams = TeacherExportParams()


class TextTeacherParams(_WindowedTeacher):
    """UniSRec-like: a text encoder's item vectors read by a SASRec."""

    family: Literal["text"] = "text"
    model: TextModelParams
    train: TextTrainParams = TextTrainParams()
    export: TeacherExportParams = TeacherExportParams()


class FusionTeacherParams(_WindowedTeacher):
    """ID embedding + adapted LM item vector (embed_items) read by a SASRec."""

    family: Literal["fusion"] = "fusion"
    model: FusionModelParams
    train: ModelTrainParams = ModelTrainParams()
    export: TeacherExportParams = TeacherExportParams()


TEACHER_FAMILIES: dict[str, type[Section]] = {
    "seq2seq": Seq2SeqTeacherParams, "causal": CausalTeacherParams, "id": IdTeacherParams,
    "text": TextTeacherParams, "fusion": FusionTeacherParams}
AnyTeacherParams = Seq2SeqTeacherParams | CausalTeacherParams | IdTeacherParams | TextTeacherParams | FusionTeacherParams
TeacherParams = Annotated[AnyTeacherParams, Field(discriminator="family")]
TEACHER_SECTIONS = ("family", "model", "train", "export")  # every family's keys (dvc.yaml's fixed lists)
_TEACHER = TypeAdapter(TeacherParams)


def validate_teacher(raw: dict[str, Any], name: str = "t") -> AnyTeacherParams:
    """One teacher section (a params.yaml `teachers.<name>` entry), validated like params.yaml."""
    try:
        return _TEACHER.validate_python(raw)
    except ValidationError as exc:
        lines = [_describe(dict(err, loc=("teachers", name, *err["loc"])), Params) for err in exc.errors()]
        raise ParamsError(f"teachers.{name} is invalid:\n  " + "\n  ".join(lines)) from None


class ImportParams(Section):
    """Another system's teacher outputs (`import_teacher@<name>`), validated and rewritten in our export
    schema. `rows` and `item_ids` are file names inside `path`, so the folder is the stage's one dep."""

    format: Literal["dllm2rec", "parquet"] = Field(
        "parquet", description="dllm2rec: all_embeddings.pt + myrank_train.txt + confidence_train.txt; "
                               "parquet: a folder in our export schema")
    path: str = Field(min_length=1, description="Folder holding the files (relative to the repository root)")
    rows: str | None = Field(None, description="dllm2rec: CSV/Parquet in `path` with user_id (or user_idx) and "
                                               "position for each row of myrank_train.txt, in order")
    item_ids: str | None = Field(None, description="dllm2rec: CSV/Parquet in `path` mapping their 0-based `id` to "
                                                   "our raw `item_id`; null = their id is item_idx - 1")

    @model_validator(mode="after")
    def _check(self) -> ImportParams:
        for key in ("rows", "item_ids"):
            value = getattr(self, key)
            if value is None:
                continue
            if self.format != "dllm2rec":
                raise ValueError(f"{key} applies to format dllm2rec only (format is {self.format})")
            parts = Path(value).parts
            if Path(value).is_absolute() or not parts or ".." in parts:
                raise ValueError(f"{key} {value!r} must be a file name inside `path` (relative, no '..'): the "
                                 f"stage's one dep is the folder")
        if self.format == "dllm2rec" and self.rows is None:
            raise ValueError("format dllm2rec needs rows: the file naming each row's (user, position)")
        return self


class DLLM2RecParams(Section):
    """Importance-aware ranking distillation + collaborative embedding distillation (docs/methods.md §4.1)."""

    weight: float = Field(0.8, ge=0.0, description="lambda of the ranking-distillation term")
    top_k: int = Field(10, ge=1, description="Teacher items distilled per example")
    position_temperature: float = Field(1.0, gt=0.0)
    confidence_temperature: float = Field(1.0, gt=0.0)
    gamma_position: float = Field(0.3, ge=0.0)
    gamma_confidence: float = Field(0.5, ge=0.0)
    gamma_consistency: float = Field(0.1, ge=0.0)
    negatives: int = Field(1, ge=1)
    ed_weight: float = Field(0.2, ge=0.0, description="Weight of projected teacher item embeddings (0 = no CED)")
    ed_table: str = Field("teacher", description="CED's item table: `teacher` (the export's item embeddings) or the "
                                                 "name of an `embed` entry (the LM's own item vectors, as DLLM2Rec)")


class PRMKDParams(Section):
    """Multi-teacher in-batch distillation with consistency weights (docs/methods.md §4.2)."""

    weight: float = Field(1.0, ge=0.0)
    temperature: float = Field(1.0, gt=0.0)
    student_temperature: float = Field(1.0, gt=0.0)
    teacher_weights: list[float] | None = Field(None, description="null = each teacher's validation NDCG@10")
    epsilon: float = Field(0.1, ge=0.0)
    floor_margin: float = Field(1.0, ge=0.0)
    direction: Literal["qp", "pq"] = Field("qp", description="qp: KL(teacher||student); pq: KL(student||teacher)")
    use_states: bool = Field(True, description="Score in-batch items from states x embeddings when exported")


class FeatureParams(Section):
    """SLMRec-style alignment of student hidden states to teacher sequence states (docs/methods.md §4.3)."""

    weight: float = Field(1.0, ge=0.0)
    blocks: list[int] = Field([-1], min_length=1, description="Student blocks aligned (-1 = last)")
    cosine_weight: float = Field(1.0, ge=0.0)
    l2_weight: float = Field(0.1, ge=0.0)
    multi_block_weight: float = Field(0.0, ge=0.0, description="CE at intermediate blocks")


class LogitKDParams(Section):
    """Hinton KD on the teacher's top-K (or full catalogue with a floor)."""

    weight: float = Field(1.0, ge=0.0)
    temperature: float = Field(2.0, gt=0.0)
    top_k: int | None = Field(None, ge=1, description="null = the export's K")
    full_catalogue: bool = False
    floor_margin: float = Field(1.0, ge=0.0)
    floor: Literal["margin", "residual"] = Field(
        "margin", description="full_catalogue: unlisted items at min(listed) - floor_margin, or (residual, "
                              "log-probability scores) the left-over probability spread evenly")


DISTILL_METHODS = ("dllm2rec", "prmkd", "feature", "logit_kd")
Method = Literal["dllm2rec", "prmkd", "feature", "logit_kd"]


class LLMInitParams(Section):
    """The student's item table starts as the LM's item vectors projected to its width (LLMInit/AlphaFuse)."""

    embedding: str | None = Field(None, description="Name of the `embed` entry whose item vectors initialise the table")
    projection: Literal["pca"] = Field("pca", description="pca: the top principal components of the centred vectors")
    scale: float = Field(0.02, gt=0.0, description="Std of the projected table (the students' own init: 0.02)")
    combine: list[Method] = Field([], description="Distillation methods also trained from the LM-initialised "
                                                  "table: rows llm_init+<method> (what distillation adds on top)")

    @model_validator(mode="after")
    def _check(self) -> LLMInitParams:
        if len(set(self.combine)) != len(self.combine):
            raise ValueError(f"combine has duplicates: {self.combine}")
        return self


def method_parts(method: str) -> list[str]:
    """`llm_init+dllm2rec` -> ["llm_init", "dllm2rec"]: the LM initialisation, then a distillation method."""
    return method.split("+")


class DistillParams(Section):
    """Which methods the DAG trains besides the baseline, and from which teachers."""

    methods: list[Literal["dllm2rec", "prmkd", "feature", "logit_kd", "llm_init"]] = Field(
        [], description="llm_init: the student's item table initialised from LM item vectors, no teacher")
    teachers: list[str] = Field([], description="prmkd uses all; other methods the first")
    gate: bool = Field(True, description="Teacher terms only while the teacher's validation "
                                          "train.select_metric is at least the student's latest "
                                          "(a weaker teacher cannot pull the student down)")
    dllm2rec: DLLM2RecParams = DLLM2RecParams()
    prmkd: PRMKDParams = PRMKDParams()
    feature: FeatureParams = FeatureParams()
    logit_kd: LogitKDParams = LogitKDParams()
    llm_init: LLMInitParams = LLMInitParams()

    @property
    def runs(self) -> list[str]:
        """Every distilled student row: the methods, then llm_init+<method> for each combined method."""
        return [*self.methods, *(f"llm_init+{method}" for method in self.llm_init.combine)]

    @model_validator(mode="after")
    def _check(self) -> DistillParams:
        for name, values in (("methods", self.methods), ("teachers", self.teachers)):
            if len(set(values)) != len(values):
                raise ValueError(f"distill.{name} has duplicates: {values}")
        return self


class BucketParams(Section):
    """Test users split by the target item's training popularity and by history length."""

    tail_share: float = Field(0.8, gt=0.0, lt=1.0, description=(
        "tail = targets among this share of items with the fewest training occurrences; head = the rest"))
    short_history: int = Field(5, ge=1, description="short = at most this many items before the target")


class EvaluateParams(Section):
    """Full-ranking evaluation protocol and inference-cost measurement."""

    ks: list[int] = Field([5, 10, 20], min_length=1)
    exclude_history: bool = Field(False, description="Remove the user's earlier items from ranking")
    compare_metric: str = Field("ndcg@10", description="Gain over the baseline and paired test use this")
    batch_size: int = Field(1024, ge=1)
    latency_batch_size: int = Field(1, ge=1, description="Users per call when timing inference")
    latency_repeats: int = Field(50, ge=1, description="Timed calls for ms/user")
    permutation_resamples: int = Field(9999, ge=0, description=(
        "Sign flips of the paired permutation test that checks each row's t-test (0 = off)"))
    auto: list[str] | None = Field(None, description=(
        "Candidates of row `auto`, the distilled row with the best validation compare_metric "
        "(null = every distilled row)"))
    buckets: BucketParams = BucketParams()

    @model_validator(mode="after")
    def _check(self) -> EvaluateParams:
        if any(k < 1 for k in self.ks) or len(set(self.ks)) != len(self.ks):
            raise ValueError("ks must be distinct positive integers")
        _check_metric(self.compare_metric)
        return self


class ReleaseParams(Section):
    """What `release` ships (models/release/): one row's student, its ONNX twin and model card."""

    row: str = Field("best", description=(
        "best = evaluate's choice on validation (row auto); or baseline / a distilled row's name"))
    seed: int | Literal["best"] = Field("best", description=(
        "best = the row's seed with the best validation compare_metric; or one of train.seeds"))
    teacher: str | None = Field("best", description=(
        "The teacher shipped beside the student for the page (id, text and fusion families: a SASRec over "
        "its folded item table); best = evaluate's choice on validation when it is one of those; null = none"))
    parity_histories: int = Field(1024, ge=1, description="Histories on which ONNX must match torch")
    parity_tolerance: float = Field(1e-4, gt=0, allow_inf_nan=False, description="Max |score difference|")
    latency_repeats: int = Field(200, ge=1, description="Timed single-history calls per backend (model card)")


class ServeParams(Section):
    """Defaults of `distillrec serve`, written into the release's config.json (its flags override them)."""

    backend: Literal["onnx", "torch"] = "onnx"
    threads: int = Field(1, ge=1, description="Intra-op threads of one forward pass")
    workers: int = Field(1, ge=1, description=(
        "Server processes sharing the port, each with its own model and batcher (one per core)"))
    max_batch: int = Field(64, ge=1, description="Histories scored in one forward pass (micro-batching)")
    max_wait_ms: float = Field(0.0, ge=0, allow_inf_nan=False, description=(
        "How long a batch waits for more histories once the first has arrived"))
    queue_size: int = Field(1024, ge=1, description="Histories waiting for a batch; beyond it: 503 + Retry-After")
    retry_after_s: int = Field(1, ge=1)
    max_histories: int = Field(64, ge=1, description="Histories per request")
    max_history_items: int = Field(1000, ge=1, description="Items per history (only the most recent max_length are read)")
    max_k: int = Field(100, ge=1)
    max_body_bytes: int = Field(1 << 20, ge=1024, description="Request body limit (413 beyond it)")


Axis = dict[str, list[Any]]  # dotted params key -> the values searched, e.g. {"train.lr": [0.001, 0.003]}


class TuneParams(Section):
    """An equal tuning budget for every row, run through DVC's experiment queue (`python -m distillrec
    tune`, docs/evaluation.md): experiment (g, j) sets point g of `grid` and the j-th value of every
    row's own axis, so each row is trained at len(grid points) x len(own axis) settings, and each is
    chosen on validation."""

    grid: Axis = Field({"student.dropout": [0.2, 0.5], "train.lr": [0.001, 0.003]},
                       description="Shared axes: every combination is searched for every row")
    own: dict[str, Axis] = Field({}, description="Each row's own knob (the baseline's too), zipped: every list "
                                                 "has one length, so every row gets the same number of points")
    seeds: list[int] = Field([42], min_length=1, description="Seeds of each searched point")
    final_seeds: list[int] = Field([1, 2, 3], min_length=1, description="Seeds of each row's chosen point")

    @model_validator(mode="after")
    def _check(self) -> TuneParams:
        axes = {f"grid.{key}": values for key, values in self.grid.items()}
        axes |= {f"own.{row}.{key}": values for row, axis in self.own.items() for key, values in axis.items()}
        for name, values in axes.items():
            if not values or len(values) != len(set(map(repr, values))):
                raise ValueError(f"tune.{name}: give distinct values, got {values}")
        lengths = {len(values) for axis in self.own.values() for values in axis.values()}
        if len(lengths) > 1:
            raise ValueError(f"tune.own: every row's axis needs the same number of values (the rows' budgets are "
                             f"equal), got lengths {sorted(lengths)}")
        shared = {}
        for row, axis in self.own.items():
            if not axis:
                raise ValueError(f"tune.own.{row}: give at least one key")
            for key, values in axis.items():
                if key in self.grid:
                    raise ValueError(f"tune.own.{row}.{key} is also a grid axis")
                if shared.setdefault(key, values) != values:
                    raise ValueError(f"tune.own: {key} is set by several rows with different values")
        return self


class Params(Section):
    dataset: DatasetParams = DatasetParams()
    ingest: IngestParams = IngestParams()
    split: SplitParams = SplitParams()
    student: StudentParams = StudentParams()
    train: TrainParams = TrainParams()
    teachers: dict[str, TeacherParams] = {}
    imports: dict[str, ImportParams] = {}
    embed: dict[str, EmbedParams] = {}
    distill: DistillParams = DistillParams()
    evaluate: EvaluateParams = EvaluateParams()
    tune: TuneParams = TuneParams()
    release: ReleaseParams = ReleaseParams()
    serve: ServeParams = ServeParams()

    @property
    def auto_candidates(self) -> list[str]:
        """The distilled rows row `auto` chooses among on validation (`evaluate.auto`, null = all)."""
        return self.distill.runs if self.evaluate.auto is None else self.evaluate.auto

    @property
    def teacher_names(self) -> list[str]:
        """Every teacher export under data/teacher/: the trained teachers, then the imported ones."""
        return [*self.teachers, *self.imports]

    @model_validator(mode="after")
    def _check(self) -> Params:
        for section in ("teachers", "imports", "embed"):
            for name in getattr(self, section):
                if not TEACHER_NAME.fullmatch(name):
                    raise ValueError(f"{section} name {name!r}: use letters, digits, '_' and '-'")
        both = sorted(set(self.teachers) & set(self.imports))
        if both:
            raise ValueError(f"{', '.join(both)}: named under both teachers and imports; both write "
                             f"data/teacher/<name>: rename one")
        unknown = [name for name in self.distill.teachers if name not in self.teacher_names]
        taught = [m for m in self.distill.runs if set(method_parts(m)) & set(DISTILL_METHODS)]
        if taught and not self.distill.teachers:
            raise ValueError(f"distill.methods {taught} need at least one teacher in distill.teachers")
        if unknown:
            raise ValueError(f"distill.teachers {unknown} are not configured under teachers or imports "
                             f"(configured: {', '.join(self.teacher_names) or 'none'})")
        self._check_embeddings()
        auto = self.evaluate.auto
        if auto is not None and (not auto or len(set(auto)) != len(auto) or set(auto) - set(self.distill.runs)):
            raise ValueError(f"evaluate.auto {self.evaluate.auto}: name rows the DAG trains (distill.methods and "
                             f"llm_init+<combine>: {', '.join(self.distill.runs) or 'none'}), or null for all of them")
        self._check_release()
        stride = self.train.window_stride
        if stride is not None and stride > self.student.max_length:
            raise ValueError(f"train.window_stride ({stride}) must be <= student.max_length "
                             f"({self.student.max_length})")
        return self

    def _check_release(self) -> None:
        """release.row, seed and teacher name what the DAG trains."""
        r = self.release
        if r.row not in ("best", "baseline", *self.distill.runs):
            raise ValueError(f"release.row {r.row!r}: best, baseline or a distilled row "
                             f"({', '.join(self.distill.runs) or 'none'})")
        if r.seed != "best" and r.seed not in self.train.seeds:
            raise ValueError(f"release.seed {r.seed}: best or one of train.seeds {self.train.seeds}")
        if r.teacher not in (None, "best", *self.teachers):
            raise ValueError(f"release.teacher {r.teacher!r}: best, null or a trained teacher "
                             f"({', '.join(self.teachers) or 'none'})")

    def _check_embeddings(self) -> None:
        """Every section that reads item vectors names a configured `embed` entry."""
        wanted = {f"teachers.{name}.model.embedding": t.model.embedding
                  for name, t in self.teachers.items() if t.family == "fusion"}
        if any(method_parts(m)[0] == "llm_init" for m in self.distill.runs):
            wanted["distill.llm_init.embedding"] = self.distill.llm_init.embedding
        if self.distill.dllm2rec.ed_table != "teacher" and any("dllm2rec" in method_parts(m)
                                                                for m in self.distill.runs):
            wanted["distill.dllm2rec.ed_table"] = self.distill.dllm2rec.ed_table
        for key, name in wanted.items():
            if name not in self.embed:
                raise ValueError(f"{key} is {name!r}, which is not an entry of `embed` (configured: "
                                 f"{', '.join(self.embed) or 'none'})" + ("; or `teacher`" if key.endswith("ed_table") else ""))


def _union_members(annotation: Any) -> dict[str, type[BaseModel]]:
    """A union discriminated on `family` (the teachers): tag -> member; {} for any other annotation."""
    if typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) not in (typing.Union, types.UnionType):
        return {}
    members = [m for m in typing.get_args(annotation) if isinstance(m, type) and issubclass(m, BaseModel)]
    return {typing.get_args(m.model_fields["family"].annotation)[0]: m for m in members
            if "family" in m.model_fields}


def _walk(model: type[BaseModel], loc: tuple) -> tuple[str, Any]:
    """The dotted key of an error's location (a union's tag left out) and the annotation it ends at."""
    parent: Any = model
    printed = []
    for part in loc:
        members = _union_members(parent)
        if str(part) in members:  # pydantic names the member it validated against
            parent = members[str(part)]
            continue
        printed.append(str(part))
        if isinstance(parent, type) and issubclass(parent, BaseModel):
            field = parent.model_fields.get(str(part))
            parent = field.annotation if field is not None else None
        elif typing.get_origin(parent) is dict:  # a mapping of named sections, e.g. teachers.<name>
            parent = typing.get_args(parent)[-1]
        else:
            parent = None
    return ".".join(printed), parent


def _describe(error: dict[str, Any], model: type[BaseModel]) -> str:
    key, _ = _walk(model, error["loc"])
    if error["type"] == "extra_forbidden":
        _, parent = _walk(model, error["loc"][:-1])
        allowed = ", ".join(parent.model_fields)
        return f"unknown key '{key}'; allowed keys here: {allowed}"
    if error["type"] in ("union_tag_not_found", "union_tag_invalid"):
        families = ", ".join(TEACHER_FAMILIES)
        tag = (error.get("ctx") or {}).get("tag")
        if tag == "import":
            return (f"'{key}.family': import is no longer a teacher family: another system's teacher files "
                    f"go under `imports.{key.rpartition('.')[2]}` (stage import_teacher)")
        if error["type"] == "union_tag_not_found":
            return f"'{key}': no `family`; set it to one of {families}"
        return f"'{key}.family': {tag!r} is not a teacher family; expected one of {families}"
    if not key:  # a check across sections
        return str(error["msg"]).removeprefix("Value error, ")
    return f"'{key}': {error['msg']} (got {error.get('input')!r})"


def parse_params(raw: dict[str, Any] | None, origin: str = str(PARAMS_FILE)) -> Params:
    """Validate a params mapping; all problems are reported together."""
    try:
        return Params.model_validate(raw or {})
    except ValidationError as exc:
        lines = [_describe(err, Params) for err in exc.errors()]
        raise ParamsError(f"{origin} is invalid:\n  " + "\n  ".join(lines)) from None


def load_params(path: Path | str = PARAMS_FILE) -> Params:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path} not found (run stages from the repository root)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path} is not valid YAML: {exc}") from None
    if raw is not None and not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level")
    return parse_params(raw, str(path))
