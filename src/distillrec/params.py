"""Typed, validated view of params.yaml.

Every stage validates the whole file at start-up, so a typo anywhere fails fast with the key's
dotted path and the allowed values instead of surfacing as a KeyError deep in a run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from distillrec.errors import ParamsError

PARAMS_FILE = Path("params.yaml")


class Section(BaseModel):
    """Strict base: unknown keys and loose types are errors."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class SyntheticParams(Section):
    """Size and shape of the offline synthetic dataset."""

    seed: int = 0
    n_users: int = Field(1000, ge=10)
    n_items: int = Field(400, ge=10)
    n_clusters: int = Field(8, ge=1, le=16)
    min_length: int = Field(8, ge=3)
    max_length: int = Field(40, ge=3)
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
    source: Literal["synthetic", "movielens", "amazon", "recbole", "sequences"] = "synthetic"
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
    item_core: int = Field(5, ge=0, description="Iterative k-core: min interactions per item")


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


class TrainParams(Section):
    """Optimisation of a student; model selection uses the validation split only."""

    objective: Literal["ce", "bce"] = Field(
        "ce", description="ce: softmax over the full catalogue; bce: sampled negatives")
    negatives: int = Field(1, ge=1, description="Negatives per target for bce")
    lr: float = Field(3e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    batch_size: int = Field(64, ge=1, description="Training windows per step")
    window_stride: int | None = Field(
        None, ge=1, description="Positions between training windows; null = student.max_length")
    epochs: int = Field(200, ge=1)
    patience: int = Field(10, ge=1, description="Epochs without validation gain before stopping")
    select_metric: str = "ndcg@10"
    seed: int = 42
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = Field(0, ge=0, description="torch CPU threads; 0 = torch's default")
    eval_batch_size: int = Field(1024, ge=1)

    @model_validator(mode="after")
    def _check(self) -> TrainParams:
        _check_metric(self.select_metric)
        return self


class EvaluateParams(Section):
    """Full-ranking evaluation protocol and inference-cost measurement."""

    ks: list[int] = Field([5, 10, 20], min_length=1)
    exclude_history: bool = Field(False, description="Remove the user's earlier items from ranking")
    batch_size: int = Field(1024, ge=1)
    latency_batch_size: int = Field(1, ge=1, description="Users per call when timing inference")
    latency_repeats: int = Field(200, ge=1, description="Timed calls for ms/user")

    @model_validator(mode="after")
    def _check(self) -> EvaluateParams:
        if any(k < 1 for k in self.ks) or len(set(self.ks)) != len(self.ks):
            raise ValueError("ks must be distinct positive integers")
        return self


class Params(Section):
    dataset: DatasetParams = DatasetParams()
    ingest: IngestParams = IngestParams()
    split: SplitParams = SplitParams()
    student: StudentParams = StudentParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()

    @model_validator(mode="after")
    def _check(self) -> Params:
        stride = self.train.window_stride
        if stride is not None and stride > self.student.max_length:
            raise ValueError(f"train.window_stride ({stride}) must be <= student.max_length "
                             f"({self.student.max_length})")
        return self


def _describe(error: dict[str, Any], model: type[BaseModel]) -> str:
    key = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        parent = model
        for part in error["loc"][:-1]:
            annotation = parent.model_fields[str(part)].annotation
            parent = annotation if isinstance(annotation, type) else parent
        allowed = ", ".join(parent.model_fields)
        return f"unknown key '{key}'; allowed keys here: {allowed}"
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
