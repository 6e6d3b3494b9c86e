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

Corpora larger than memory (:func:`cached_token_memmap`): :func:`iter_documents` reads a text file
line by line or a dataset folder with ``datasets`` streaming, :func:`tokenize_to_npy` tokenizes
``batch_size`` documents at a time and appends their ids to disk, and the result is an int32 ``.npy``
opened memory-mapped, from which :class:`TextWindows` reads only the windows it draws. Peak memory is
one chunk of documents and ids (plus a fixed copy buffer), whatever the corpus size.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "TextWindows",
    "cached_token_memmap",
    "cached_token_stream",
    "iter_documents",
    "load_documents",
    "tokenize_documents",
    "tokenize_to_npy",
    "tokenizer_fingerprint",
]

#: Token ids are stored with this dtype: every vocabulary fits, unlike the uint16 of the official code.
TOKEN_DTYPE = np.int32
#: Bytes copied at a time when the streamed ids are moved behind the ``.npy`` header without ``os.sendfile``.
_COPY_BUFFER_BYTES = 2**20


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


def _encode_chunk(documents: Sequence[str], tokenizer, eos: list[int], limit: int) -> np.ndarray:
    """The ids of ``documents`` (each followed by ``eos``) as one int32 array, checked against ``limit``."""
    # Special-token strings inside the text ("<fmri>", "<eos>") are text here, never control tokens.
    encoded = tokenizer(list(documents), add_special_tokens=False, split_special_tokens=True)["input_ids"]
    pieces = [np.asarray([*ids, *eos], dtype=np.int64) for ids in encoded]
    chunk = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
    if chunk.size and (chunk.min() < 0 or chunk.max() >= limit):
        raise ValueError(
            f"The T2T corpus holds token id {int(chunk.max())}, outside the model's vocabulary of {limit}: tokenize "
            "it with the language model's own tokenizer (SPEC B7)."
        )
    return chunk.astype(TOKEN_DTYPE)


def _eos_and_limit(tokenizer, vocab_size: int | None) -> tuple[list[int], int]:
    limit = len(tokenizer) if vocab_size is None else int(vocab_size)
    return ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []), limit


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
    eos, limit = _eos_and_limit(tokenizer, vocab_size)
    chunks = [_encode_chunk(documents[start : start + batch_size], tokenizer, eos, limit)
              for start in range(0, len(documents), batch_size)]  # fmt: skip
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=TOKEN_DTYPE)


def iter_documents(source: str | Path, *, text_column: str = "text", split: str = "train") -> Iterator[str]:
    """The non-empty documents of a corpus on disk, one at a time, never all in memory.

    A text file is read line by line (one document per non-empty line); a dataset folder is read
    with ``datasets.load_dataset(folder, streaming=True)`` (its ``text_column`` of ``split``). The
    source is checked now; documents are read when the iterator is consumed (it can be called again
    for a second pass).

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the folder has no such split or column.
    """
    path = Path(source)
    if path.is_file():
        return _file_lines(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"T2T corpus {path} not found; give a UTF-8 text file (one document per line) or a dataset folder with a "
            "text column."
        )
    from datasets import load_dataset

    loaded = load_dataset(str(path), streaming=True)
    if split not in loaded:
        raise ValueError(
            f"The corpus dataset {path} has no {split!r} split (it has {sorted(loaded)}); set the split to read."
        )
    rows = loaded[split]
    if rows.column_names is not None and text_column not in rows.column_names:
        raise ValueError(
            f"The corpus dataset {path} has no {text_column!r} column (it has {rows.column_names}); set the text "
            "column (t2t.text_column)."
        )
    return (text for row in rows.select_columns([text_column]) if (text := row[text_column]) and text.strip())


def _file_lines(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            line = line.rstrip("\r\n")
            if line.strip():
                yield line


def tokenize_to_npy(
    documents: Iterable[str], tokenizer, path: str | Path, *, vocab_size: int | None = None, batch_size: int = 1000
) -> np.memmap:
    """:func:`tokenize_documents` for corpora larger than memory: an int32 ``.npy`` written in chunks.

    ``batch_size`` documents are tokenized at a time and their ids appended to ``PATH.ids.tmp``;
    at the end the ``.npy`` header is written and the ids are copied behind it (``os.sendfile``, or 1 MiB blocks),
    and the file is renamed into place (atomic). Peak memory: one chunk of documents and ids.
    Returns the stream opened read-only memory-mapped ((n_tokens,) int32), equal
    to ``tokenize_documents(list(documents), ...)``.

    Raises:
        ValueError: an id outside the vocabulary (SPEC B7), or no non-empty document.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    eos, limit = _eos_and_limit(tokenizer, vocab_size)
    raw, staged = path.with_name(path.name + ".ids.tmp"), path.with_name(path.name + ".tmp")
    n_tokens = n_documents = 0
    try:
        with raw.open("wb") as ids_file:
            chunk: list[str] = []
            for document in documents:
                if not isinstance(document, str):
                    raise ValueError(f"Corpus document {n_documents} is {type(document).__name__}, not a str.")
                if not document.strip():
                    continue
                chunk.append(document)
                n_documents += 1
                if len(chunk) == batch_size:
                    n_tokens += _append(ids_file, _encode_chunk(chunk, tokenizer, eos, limit))
                    chunk = []
            if chunk:
                n_tokens += _append(ids_file, _encode_chunk(chunk, tokenizer, eos, limit))
        if n_documents == 0:
            raise ValueError("The T2T corpus has no non-empty document.")
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(TOKEN_DTYPE)), "fortran_order": False,
                  "shape": (n_tokens,)}  # fmt: skip
        with staged.open("wb") as out:
            np.lib.format.write_array_header_2_0(out, header)
            _append_file(out, raw)
        os.replace(staged, path)
    finally:
        raw.unlink(missing_ok=True)
        staged.unlink(missing_ok=True)
    return np.load(path, mmap_mode="r")


def _append_file(out, source: Path) -> None:
    """Append ``source`` to the open binary file ``out``: in the kernel (``os.sendfile``) where it can, else
    through a fixed 1 MiB buffer; never the whole file in memory."""
    out.flush()
    with source.open("rb") as src:
        size, offset = os.fstat(src.fileno()).st_size, 0
        try:
            while offset < size:
                sent = os.sendfile(out.fileno(), src.fileno(), offset, size - offset)
                if sent == 0:
                    break
                offset += sent
        except (AttributeError, OSError):  # no sendfile between these files (platform or file system)
            pass
        if offset < size:
            src.seek(offset)
            out.seek(0, os.SEEK_END)
            shutil.copyfileobj(src, out, _COPY_BUFFER_BYTES)


def _append(handle, ids: np.ndarray) -> int:
    handle.write(ids.astype("<i4", copy=False).tobytes())
    return int(ids.size)


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


def cached_token_memmap(
    source: str | Path,
    tokenizer,
    cache_dir: str | Path,
    *,
    text_column: str = "text",
    split: str = "train",
    vocab_size: int | None = None,
    batch_size: int = 1000,
) -> np.memmap:
    """The token stream of a corpus on disk, streamed (:func:`iter_documents`, :func:`tokenize_to_npy`) and
    cached in ``cache_dir`` under a hash of the documents and the tokenizer; opened memory-mapped.

    The key is computed in a first streaming pass over the documents (hashing is much faster than
    tokenizing), so a changed corpus is re-tokenized and an unchanged one never is.
    """
    digest = hashlib.sha256(tokenizer_fingerprint(tokenizer).encode())
    digest.update(json.dumps({"vocab_size": vocab_size}).encode())
    for document in iter_documents(source, text_column=text_column, split=split):
        digest.update(document.encode())
        digest.update(b"\x1e")
    path = Path(cache_dir) / f"t2t-stream-{digest.hexdigest()[:20]}.npy"
    if path.is_file():
        return np.load(path, mmap_mode="r")
    documents = iter_documents(source, text_column=text_column, split=split)
    return tokenize_to_npy(documents, tokenizer, path, vocab_size=vocab_size, batch_size=batch_size)


class TextWindows:
    """Fixed-length windows of a token stream for T2T batches, drawn reproducibly.

    :meth:`sample` returns ``count`` windows at random starts drawn from ``(seed, key...)`` (the
    stage-2 collator passes the epoch and the batch's sample indices), never from a global RNG, so
    a resumed run draws the same windows. A memory-mapped stream (:func:`cached_token_memmap`) is
    read only where windows are drawn, and pickles (to data-loader workers) as its file name.

    Args:
        stream: (n_tokens,) integer token ids (the output of :func:`tokenize_documents`).
        window_length: tokens per window.
        seed: base seed.

    Raises:
        ValueError: a stream shorter than one window, or a non-positive ``window_length``.
    """

    def __init__(self, stream: np.ndarray, window_length: int, seed: int = 0) -> None:
        if not isinstance(stream, np.memmap):
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

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if isinstance(self.stream, np.memmap) and self.stream.filename is not None:
            state["stream"] = Path(self.stream.filename)  # reopened, not copied, by the receiving process
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if isinstance(state["stream"], Path):
            state["stream"] = np.load(state["stream"], mmap_mode="r")
        self.__dict__.update(state)

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
