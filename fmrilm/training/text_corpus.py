"""The text-only (T2T) corpus of stage 2: documents tokenized with the language model's OWN tokenizer.

    documents = load_documents("corpus.txt")                  # or a dataset folder, or a list of texts
    stream = tokenize_documents(documents, lm_tokenizer)      # (n_tokens,) int32, EOS between documents
    windows = TextWindows(stream, window_length=256, seed=0)  # windows[i] -> (256,) int64, per-epoch offset

The official code feeds GPT-2-tokenized OpenWebText stored as uint16 to every LM, so a Qwen model
reads ids that mean other tokens in its vocabulary and ids above 65535 cannot even be stored (SPEC
B7). Here the corpus is always tokenized by the tokenizer of the LM being trained, the ids are kept
as int32 (never uint16), and :func:`tokenize_documents` refuses ids outside the model's vocabulary.

Sources (:func:`load_documents`): a UTF-8 text file (one document per non-empty line), a dataset
folder readable by ``datasets.load_dataset`` (its ``text_column`` of the chosen split), or a list
of strings (by default the trainer passes the training split's descriptor texts).

The token stream of a corpus is computed once per (documents, tokenizer) and cached as ``.npy``
in a cache folder (:func:`cached_token_stream`), so a resumed or repeated run does not re-tokenize.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["TextWindows", "cached_token_stream", "load_documents", "tokenize_documents", "tokenizer_fingerprint"]

#: Token ids are stored with this dtype: every vocabulary fits, unlike the uint16 of the official code.
TOKEN_DTYPE = np.int32


def load_documents(source: str | Path | Sequence[str], *, text_column: str = "text", split: str = "train") -> list[str]:
    """The documents of a T2T corpus, empty ones dropped.

    Args:
        source: a text file (one document per non-empty line), a dataset folder (``load_dataset``
            of the folder; ``split`` and ``text_column`` select the texts), or a sequence of strings.
        text_column, split: for dataset folders.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the folder has no such split or column, or the corpus has no non-empty document.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_file():
            documents = path.read_text(encoding="utf-8").splitlines()
        elif path.is_dir():
            from datasets import load_dataset

            loaded = load_dataset(str(path))
            if split not in loaded:
                raise ValueError(
                    f"The corpus dataset {path} has no {split!r} split (it has {sorted(loaded)}); set the split to read."
                )
            rows = loaded[split]
            if text_column not in rows.column_names:
                raise ValueError(
                    f"The corpus dataset {path} has no {text_column!r} column (it has {rows.column_names}); set the "
                    "text column (t2t.text_column)."
                )
            documents = rows[text_column]
        else:
            raise FileNotFoundError(
                f"T2T corpus {path} not found; give a UTF-8 text file (one document per line), a dataset folder with a "
                "text column, or null to use the training descriptor texts."
            )
    else:
        documents = list(source)
        bad = [i for i, d in enumerate(documents) if not isinstance(d, str)]
        if bad:
            raise ValueError(f"Corpus document {bad[0]} is {type(documents[bad[0]]).__name__}, not a str.")
    documents = [d for d in documents if d and d.strip()]
    if not documents:
        raise ValueError(
            f"The T2T corpus {source if isinstance(source, (str, Path)) else '(list)'} has no non-empty document."
        )
    return documents


def tokenize_documents(
    documents: Sequence[str], tokenizer, *, vocab_size: int | None = None, batch_size: int = 1000
) -> np.ndarray:
    """One token stream: each document's ids (no special tokens), followed by EOS when the tokenizer has one.

    A special token written inside a document (e.g. the literal text ``<fmri>``) is tokenized as
    ordinary text, so a text-only window can never contain an fMRI placeholder or a stray EOS.

    Args:
        documents: the texts.
        tokenizer: the language model's own tokenizer.
        vocab_size: the model's input-embedding size; ids at or above it are refused (default: ``len(tokenizer)``).
        batch_size: documents per tokenizer call.

    Returns:
        (n_tokens,) int32 array.

    Raises:
        ValueError: an id outside ``[0, vocab_size)`` (a corpus tokenized for another model: SPEC B7).
    """
    limit = len(tokenizer) if vocab_size is None else int(vocab_size)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    pieces: list[np.ndarray] = []
    for start in range(0, len(documents), batch_size):
        # Special-token strings inside the text ("<fmri>", "<eos>") are text here, never control tokens.
        encoded = tokenizer(
            list(documents[start : start + batch_size]), add_special_tokens=False, split_special_tokens=True
        )["input_ids"]
        for ids in encoded:
            pieces.append(np.asarray([*ids, *eos], dtype=np.int64))
    stream = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
    if stream.size and (stream.min() < 0 or stream.max() >= limit):
        raise ValueError(
            f"The T2T corpus holds token id {int(stream.max())}, outside the model's vocabulary of {limit}: tokenize "
            "it with the language model's own tokenizer (SPEC B7)."
        )
    return stream.astype(TOKEN_DTYPE)


def tokenizer_fingerprint(tokenizer) -> str:
    """SHA-256 (16 hex characters) of what decides the ids: the tokenizer's full serialisation."""
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode())
    else:
        digest.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
    digest.update(json.dumps([tokenizer.eos_token_id, len(tokenizer)]).encode())
    return digest.hexdigest()[:16]


def cached_token_stream(documents: Sequence[str], tokenizer, cache_dir: str | Path | None, **kwargs: Any) -> np.ndarray:
    """:func:`tokenize_documents`, cached in ``cache_dir`` under a hash of the documents and the tokenizer.

    ``cache_dir=None`` disables the cache. The file is written atomically (temporary name, then rename).
    """
    if cache_dir is None:
        return tokenize_documents(documents, tokenizer, **kwargs)
    digest = hashlib.sha256(tokenizer_fingerprint(tokenizer).encode())
    digest.update(json.dumps(sorted(kwargs.items())).encode())
    for document in documents:
        digest.update(document.encode())
        digest.update(b"\x1e")
    path = Path(cache_dir) / f"t2t-{digest.hexdigest()[:20]}.npy"
    if path.is_file():
        return np.load(path)
    stream = tokenize_documents(documents, tokenizer, **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp.npy")
    np.save(temporary, stream)
    temporary.replace(path)
    return stream


class TextWindows:
    """Fixed-length windows of a token stream for T2T batches, drawn reproducibly.

    :meth:`sample` returns ``count`` windows at random starts drawn from ``(seed, key...)`` (the
    stage-2 collator passes the epoch and the batch's sample indices), never from a global RNG, so
    a resumed run draws the same windows.

    Args:
        stream: (n_tokens,) integer token ids (the output of :func:`tokenize_documents`).
        window_length: tokens per window.
        seed: base seed.

    Raises:
        ValueError: a stream shorter than one window, or a non-positive ``window_length``.
    """

    def __init__(self, stream: np.ndarray, window_length: int, seed: int = 0) -> None:
        stream = np.asarray(stream)
        if stream.ndim != 1 or stream.dtype.kind not in "iu":
            raise ValueError(f"stream must be a 1-D integer array of token ids, got {stream.dtype} {stream.shape}.")
        if stream.dtype == np.uint16:
            raise ValueError("stream is uint16, which cannot hold every vocabulary's ids (SPEC B7); store int32.")
        if isinstance(window_length, bool) or not isinstance(window_length, int) or window_length < 2:
            raise ValueError(f"window_length must be an integer >= 2, got {window_length!r}.")
        if stream.size < window_length:
            raise ValueError(
                f"The T2T corpus has {stream.size} tokens, fewer than one window of {window_length}: give a larger "
                "corpus (t2t.corpus) or a shorter t2t.window_length."
            )
        self.stream = stream
        self.window_length = window_length
        self.seed = int(seed)

    @property
    def num_starts(self) -> int:
        """How many distinct windows the stream holds (start offsets)."""
        return self.stream.size - self.window_length + 1

    def sample(self, count: int, key: Sequence[int]) -> torch.Tensor:
        """(count, window_length) int64 windows at starts drawn from ``(seed, *key)``."""
        entropy = [self.seed, *(int(k) for k in key)]
        rng = np.random.default_rng(np.random.SeedSequence(entropy))
        starts = rng.integers(0, self.num_starts, size=count)
        offsets = starts[:, None] + np.arange(self.window_length)[None, :]
        return torch.from_numpy(self.stream[offsets].astype(np.int64))
