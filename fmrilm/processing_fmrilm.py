"""``FmriLMProcessor``: tokenizes fMRI the way a text tokenizer tokenizes text.

It holds three parts (DESIGN.md section 4):

- ``feature_extractor``: an :class:`FmriFeatureExtractor` (raw (time, rois) scans -> normalised
  fixed-length ``fmri_values`` (B, T, R) and ``fmri_mask`` (B, T));
- ``tokenizer``: the language model's text tokenizer (``None`` until stage 2 picks a language model);
- ``fmri_tokenizer``: the stage-1 :class:`FmriTokenizerModel` (a torch model: normalised signal ->
  discrete codes and back).

``processor.tokenize_fmri(scans, tr=...)`` runs the first and the last: it returns the codes (B, N),
``N = num_time_patches * n_rois``, time-major (token ``t * n_rois + r``). Tokens whose time patch is
padding (a scan shorter than ``max_timepoints`` after resampling) get the code :data:`PAD_CODE`
(-1), so they cannot be mistaken for real codes; ``decode_fmri`` understands it.

Saving. transformers processors serialise their sub-processors as JSON, which a torch model is not,
so the fMRI tokenizer is saved with its own ``save_pretrained`` into the ``fmri_tokenizer/``
subfolder and ``processor_config.json`` names it::

    "fmri_tokenizer": {"fmri_tokenizer_class": "FmriTokenizerModel", "subfolder": "fmri_tokenizer"}

the way transformers 5 references an ``audio_tokenizer``. ``from_pretrained`` (and
``AutoProcessor.from_pretrained`` once the package registers the class) restores all three parts;
``"tokenizer": null`` in the same file records that no text tokenizer was saved.

Text and fMRI together (stage 2). ``processor.add_fmri_special_tokens()`` adds ``<fmri>``,
``<fmri_start>`` and ``<fmri_end>`` to the text tokenizer as special tokens (never split, never
merged, hidden by ``decode(..., skip_special_tokens=True)``). Then each ``<fmri>`` marker in a text
stands for one scan: ``processor(text="<fmri> Describe the scan.", fmri=scans, tr=tr)`` (or
``fmri_codes=`` pre-tokenized codes) tokenizes the text, and replaces every marker *id* by
``<fmri_start>`` + N x ``<fmri>`` + ``<fmri_end>`` (N = :attr:`FmriLMProcessor.num_fmri_tokens`),
so no text merge can touch the placeholders; the model later swaps the N placeholder embeddings of
each block for the embeddings of one row of ``fmri_codes``. ``text_target`` appends an answer or
descriptor whose tokens (and EOS) are the only labelled ones (SPEC B8).

This module imports only torch, numpy, transformers and its siblings, relatively, so
``save_pretrained`` can ship it as remote code (``trust_remote_code=True``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer, BatchFeature, PreTrainedTokenizerBase, ProcessorMixin
from transformers.dynamic_module_utils import custom_object_save
from transformers.utils import CHAT_TEMPLATE_DIR, CHAT_TEMPLATE_FILE, PROCESSOR_NAME

from .feature_extraction_fmrilm import FmriFeatureExtractor
from .modeling_fmri_tokenizer import FmriTokenizerModel

__all__ = [
    "FMRI_END_TOKEN",
    "FMRI_START_TOKEN",
    "FMRI_TOKEN",
    "FMRI_TOKENIZER_FOLDER",
    "IGNORE_INDEX",
    "PAD_CODE",
    "FmriLMProcessor",
]

#: Subfolder of a saved processor that holds the fMRI tokenizer model.
FMRI_TOKENIZER_FOLDER = "fmri_tokenizer"
#: Code of a token whose time patch is padding.
PAD_CODE = -1
#: The marker a text uses for one scan; after expansion, also each of the scan's N placeholders.
FMRI_TOKEN = "<fmri>"
#: Opens the block of a scan's N placeholders.
FMRI_START_TOKEN = "<fmri_start>"
#: Closes the block of a scan's N placeholders.
FMRI_END_TOKEN = "<fmri_end>"
#: Label of the tokens that no loss reads (prompt, fMRI blocks, padding), as torch's cross-entropy expects.
IGNORE_INDEX = -100
#: ``add_fmri_special_tokens()`` keys (the ``FmriLMConfig`` fields) and their tokens.
_FMRI_SPECIAL_TOKENS = {
    "fmri_token_id": FMRI_TOKEN,
    "fmri_start_token_id": FMRI_START_TOKEN,
    "fmri_end_token_id": FMRI_END_TOKEN,
}
_PADDING_STRATEGIES = {True: "longest", "longest": "longest", False: "do_not_pad", "do_not_pad": "do_not_pad",
                       "max_length": "max_length"}  # fmt: skip
#: Settings the feature extractor and the fMRI tokenizer must share.
_SHARED_SETTINGS = ("n_rois", "max_timepoints", "patch_size")
#: ``from_pretrained`` arguments that locate files; they also apply to the fMRI tokenizer's subfolder.
_HUB_KWARGS = ("cache_dir", "force_download", "proxies", "token", "local_files_only", "revision")


class FmriLMProcessor(ProcessorMixin):
    r"""Feature extractor + text tokenizer + fMRI tokenizer model, saved and loaded together.

    Args:
        feature_extractor: an :class:`FmriFeatureExtractor` (required).
        tokenizer: the language model's text tokenizer, or ``None`` (stage 1).
        fmri_tokenizer: an :class:`FmriTokenizerModel` whose ``n_rois``, ``max_timepoints`` and
            ``patch_size`` equal the feature extractor's, or ``None`` (then only the feature
            extractor and the tokenizer can be used).
        chat_template: a Jinja chat template for the text tokenizer, if any.

    Example:

    ```python
    >>> import numpy as np
    >>> from fmrilm import FmriFeatureExtractor, FmriTokenizerConfig
    >>> from fmrilm.modeling_fmri_tokenizer import FmriTokenizerModel
    >>> from fmrilm.processing_fmrilm import FmriLMProcessor
    >>> config = FmriTokenizerConfig.preset("tiny", n_rois=94, max_timepoints=32, patch_size=8)
    >>> processor = FmriLMProcessor(
    ...     feature_extractor=FmriFeatureExtractor(n_rois=94, max_timepoints=32, patch_size=8),
    ...     fmri_tokenizer=FmriTokenizerModel(config).eval(),
    ... )
    >>> scans = [np.random.default_rng(0).normal(size=(200, 94)) for _ in range(2)]  # (time, rois)
    >>> codes = processor.tokenize_fmri(scans, tr=0.72)
    >>> codes.shape  # (scans, 4 time patches x 94 ROIs), token t * 94 + r
    torch.Size([2, 376])
    >>> processor.decode_fmri(codes).shape  # normalised signal (scans, time, rois)
    torch.Size([2, 32, 94])
    >>> processor.save_pretrained("my-processor")  # the model goes to my-processor/fmri_tokenizer/
    ```

    Stage 2, with the language model's tokenizer (``FmriLMForCausalLM.from_text_model`` calls
    ``add_fmri_special_tokens`` itself):

    ```python
    >>> from transformers import AutoTokenizer
    >>> processor = FmriLMProcessor(processor.feature_extractor, AutoTokenizer.from_pretrained("gpt2"),
    ...                             processor.fmri_tokenizer)
    >>> processor.add_fmri_special_tokens()
    {'fmri_token_id': 50257, 'fmri_start_token_id': 50258, 'fmri_end_token_id': 50259}
    >>> processor.tokenizer.pad_token = processor.tokenizer.eos_token
    >>> inputs = processor(text=["<fmri> Describe the scan.", "Compare <fmri> and <fmri>."],
    ...                    fmri_codes=codes[[0, 1, 0]], text_target=[" Modularity is high.", " Yes."])
    >>> inputs["fmri_codes"].shape  # one row per marker, in reading order
    torch.Size([3, 376])
    >>> sorted(inputs)
    ['attention_mask', 'fmri_codes', 'input_ids', 'labels']
    ```
    """

    def __init__(
        self,
        feature_extractor: FmriFeatureExtractor | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        fmri_tokenizer: FmriTokenizerModel | None = None,
        chat_template: str | dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        if feature_extractor is None:
            raise ValueError(
                "FmriLMProcessor needs a feature_extractor: pass FmriFeatureExtractor(n_rois=..., max_timepoints=..., "
                "patch_size=...) with the settings the fMRI tokenizer was trained with."
            )
        for name in _SHARED_SETTINGS:
            if not hasattr(feature_extractor, name):
                raise TypeError(
                    f"feature_extractor must be an FmriFeatureExtractor, got {type(feature_extractor).__name__} "
                    f"(it has no {name!r})."
                )
        if fmri_tokenizer is not None:
            if not isinstance(fmri_tokenizer, FmriTokenizerModel):
                raise TypeError(
                    f"fmri_tokenizer must be an FmriTokenizerModel, got {type(fmri_tokenizer).__name__}; load one with "
                    "FmriTokenizerModel.from_pretrained(...)."
                )
            _check_settings_agree(feature_extractor, fmri_tokenizer)
        self.fmri_tokenizer = fmri_tokenizer
        super().__init__(feature_extractor, tokenizer, chat_template=chat_template, **kwargs)

    # ---- the parts ProcessorMixin manages ---------------------------------------------------------

    @classmethod
    def get_attributes(cls) -> list[str]:
        """The JSON-serialisable parts: the feature extractor and the text tokenizer.

        ``fmri_tokenizer`` is a model; ProcessorMixin would take it for a text tokenizer by its name,
        so it is left out here and saved, loaded and serialised by this class itself.
        """
        return ["feature_extractor", "tokenizer"]

    def check_argument_for_proper_class(self, argument_name: str, argument: Any):
        if argument_name == "tokenizer" and argument is None:
            return None  # no text tokenizer yet (stage 1)
        return super().check_argument_for_proper_class(argument_name, argument)

    # ---- fMRI <-> codes ---------------------------------------------------------------------------

    def _require_fmri_tokenizer(self, caller: str) -> FmriTokenizerModel:
        if self.fmri_tokenizer is None:
            raise ValueError(
                f"{caller} needs an fMRI tokenizer, but this processor has none: build it with "
                "FmriLMProcessor(feature_extractor=..., fmri_tokenizer=FmriTokenizerModel...) or load a processor "
                f"folder that has a {FMRI_TOKENIZER_FOLDER}/ subfolder (the output of stage-1 training)."
            )
        return self.fmri_tokenizer

    def extract_features(self, fmri: Any, tr: Any = None, **feature_extractor_kwargs: Any) -> BatchFeature:
        """Model inputs from raw scans, or the given inputs themselves when already extracted.

        Args:
            fmri: raw scans (one (time, rois) array, numpy/torch/nested lists, or a list of them),
                or already extracted inputs: a BatchFeature/dict with ``fmri_values`` (and optionally
                ``fmri_mask``), or an ``fmri_values`` tensor (B, T, R).
            tr: repetition time in seconds, one or one per scan; required for raw scans, refused
                for extracted inputs.
            feature_extractor_kwargs: ``crop_strategy``, ``seed``, ``window_stride`` for raw scans.

        Returns:
            BatchFeature with torch tensors ``fmri_values`` (B, T, R) float32 and ``fmri_mask`` (B, T)
            int64 (all ones when extracted values came without a mask), plus ``scan_index`` (B,)
            with sliding windows.
        """
        if isinstance(fmri, Mapping) or (isinstance(fmri, torch.Tensor) and fmri.ndim == 3):
            if tr is not None or feature_extractor_kwargs:
                raise ValueError(
                    "tr and feature-extractor options apply to raw scans only, but these inputs are already extracted "
                    "(fmri_values); drop them, or pass the raw (time, rois) scans instead."
                )
            return self._extracted_inputs(fmri)
        return self.feature_extractor(fmri, tr, return_tensors="pt", **feature_extractor_kwargs)

    def _extracted_inputs(self, fmri: Mapping | torch.Tensor) -> BatchFeature:
        if isinstance(fmri, Mapping):
            if "fmri_values" not in fmri:
                raise ValueError(
                    f"Extracted inputs must hold 'fmri_values' (the feature extractor's output), got keys {sorted(fmri)}."
                )
            data = dict(fmri)
        else:
            data = {"fmri_values": fmri}
        values = data["fmri_values"]
        if not isinstance(values, torch.Tensor):
            values = torch.as_tensor(np.asarray(values))
        expected = (self.feature_extractor.max_timepoints, self.feature_extractor.n_rois)
        if values.ndim != 3 or tuple(values.shape[1:]) != expected:
            raise ValueError(
                f"fmri_values must be shaped (batch, time, rois) = (B, {expected[0]}, {expected[1]}) for this processor, "
                f"got {tuple(values.shape)}; pass raw scans (with tr) to have them extracted."
            )
        mask = data.get("fmri_mask")
        mask = torch.ones(values.shape[:2], dtype=torch.long) if mask is None else torch.as_tensor(mask)
        if tuple(mask.shape) != tuple(values.shape[:2]):
            raise ValueError(
                f"fmri_mask must be shaped (batch, time) = {tuple(values.shape[:2])}, got {tuple(mask.shape)}."
            )
        data.update(fmri_values=values, fmri_mask=mask)
        return BatchFeature(data=data)

    def tokenize_fmri(
        self, fmri: Any, tr: Any = None, *, batch_size: int = 32, **feature_extractor_kwargs: Any
    ) -> torch.LongTensor:
        """Scans -> fMRI token codes (B, N) int64, time-major (token ``t * n_rois + r``).

        Raw scans go through the feature extractor (all of them at once, so its output for B scans,
        B x T x R float32, is held in memory; pass very large collections in chunks), then through
        ``fmri_tokenizer.encode`` in batches of ``batch_size`` under ``torch.inference_mode`` on the
        model's device. Tokens of padded time patches get :data:`PAD_CODE`. The codes do not depend
        on ``batch_size``.

        Args:
            fmri, tr, feature_extractor_kwargs: see :meth:`extract_features`.
            batch_size: scans per forward pass.

        Returns:
            CPU LongTensor (B, num_time_patches * n_rois); B counts windows with sliding crops (call
            the feature extractor yourself to keep its ``scan_index``, then pass its output here).
        """
        model = self._require_fmri_tokenizer("tokenize_fmri")
        batch_size = _positive_int(batch_size, "batch_size")
        inputs = self.extract_features(fmri, tr, **feature_extractor_kwargs)
        values, time_mask = inputs["fmri_values"], inputs["fmri_mask"]
        pieces = []
        with torch.inference_mode():
            for start in range(0, values.shape[0], batch_size):
                batch_values = values[start : start + batch_size].to(model.device)
                batch_mask = time_mask[start : start + batch_size].to(model.device)
                codes = model.encode(batch_values, batch_mask)
                real = model.token_mask(batch_mask)
                pieces.append(torch.where(real, codes, torch.full_like(codes, PAD_CODE)).cpu())
        return torch.cat(pieces) if pieces else torch.zeros((0, model.config.num_tokens), dtype=torch.long)

    def decode_fmri(self, codes: Any, *, batch_size: int = 32) -> torch.Tensor:
        """fMRI token codes (B, N) -> reconstructed normalised signal (B, T, R) float32 on the CPU.

        Codes may be any integer tensor or array (e.g. the int16 ``fmri_codes`` column) with values in
        ``[0, num_codes)`` or :data:`PAD_CODE`. Time patches
        whose codes are all :data:`PAD_CODE` are treated as padding (left out as attention keys, as
        in ``tokenize_fmri``) and come back as zeros.
        """
        model = self._require_fmri_tokenizer("decode_fmri")
        batch_size = _positive_int(batch_size, "batch_size")
        codes = self._validated_codes(codes)
        config = model.config
        padded = (codes == PAD_CODE).view(codes.shape[0], config.num_time_patches, config.n_rois)
        time_mask = (~padded[:, :, 0]).repeat_interleave(config.patch_size, dim=1).long()
        outputs = []
        with torch.inference_mode():
            for start in range(0, codes.shape[0], batch_size):
                batch_codes = codes[start : start + batch_size]
                batch_mask = time_mask[start : start + batch_size]
                has_padding = bool((batch_mask == 0).any())
                signal = (
                    model.decode(
                        batch_codes.clamp(min=0).to(model.device), batch_mask.to(model.device) if has_padding else None
                    )
                    .float()
                    .cpu()
                )
                outputs.append(signal * batch_mask[:, :, None] if has_padding else signal)
        return torch.cat(outputs) if outputs else torch.zeros((0, config.max_timepoints, config.n_rois))

    # ---- text + fMRI (stage 2) --------------------------------------------------------------------

    @property
    def num_fmri_tokens(self) -> int:
        """N, the placeholders (and codes) per scan: ``num_time_patches * n_rois``, time-major."""
        if self.fmri_tokenizer is not None:
            return int(self.fmri_tokenizer.config.num_tokens)
        extractor = self.feature_extractor
        return int(extractor.n_rois * (extractor.max_timepoints // extractor.patch_size))

    @property
    def model_input_names(self) -> list[str]:
        """The feature extractor's and the text tokenizer's input names, then ``fmri_codes``."""
        return [*super().model_input_names, "fmri_codes"]

    def _require_text_tokenizer(self, caller: str) -> PreTrainedTokenizerBase:
        if self.tokenizer is None:
            raise ValueError(
                f"{caller} needs a text tokenizer, but this processor has no text tokenizer (stage 1); build it with "
                "FmriLMProcessor(feature_extractor, tokenizer=AutoTokenizer.from_pretrained(LM), fmri_tokenizer) "
                "with the tokenizer of the language model."
            )
        return self.tokenizer

    def add_fmri_special_tokens(self) -> dict[str, int]:
        """Add ``<fmri>``, ``<fmri_start>`` and ``<fmri_end>`` to the text tokenizer as special tokens.

        They become added tokens, so the tokenizer never splits them nor merges them with their
        neighbours, ``decode(..., skip_special_tokens=True)`` drops them, and they are saved and
        loaded with the tokenizer. Tokens the tokenizer already has as special tokens are kept (a
        second call changes nothing). A token that is a plain vocabulary word keeps its id and becomes
        special. The language model's embeddings must then be resized to ``len(processor.tokenizer)``
        (``FmriLMForCausalLM.from_text_model`` does this).

        Returns:
            ``{"fmri_token_id": ..., "fmri_start_token_id": ..., "fmri_end_token_id": ...}`` (the
            ``FmriLMConfig`` fields).
        """
        tokenizer = self._require_text_tokenizer("add_fmri_special_tokens")
        special = set(tokenizer.all_special_tokens)
        missing = [token for token in _FMRI_SPECIAL_TOKENS.values() if token not in special]
        if missing:
            tokenizer.add_special_tokens({"extra_special_tokens": missing}, replace_extra_special_tokens=False)
        return self._fmri_special_token_ids()

    def _fmri_special_token_ids(self) -> dict[str, int]:
        """The ids of the three fMRI special tokens; ValueError if the tokenizer does not have them."""
        tokenizer = self._require_text_tokenizer("Expanding '<fmri>' markers")
        special = set(tokenizer.all_special_tokens)
        missing = [token for token in _FMRI_SPECIAL_TOKENS.values() if token not in special]
        if missing:
            raise ValueError(
                f"The text tokenizer has no special token(s) {missing}, so '{FMRI_TOKEN}' would be split into text "
                "pieces. Call processor.add_fmri_special_tokens() once (FmriLMForCausalLM.from_text_model does it) and "
                "resize the language model's embeddings to len(processor.tokenizer)."
            )
        return {name: int(tokenizer.convert_tokens_to_ids(token)) for name, token in _FMRI_SPECIAL_TOKENS.items()}

    def __call__(
        self,
        fmri: Any = None,
        text: str | list[str] | None = None,
        tr: Any = None,
        *,
        fmri_codes: Any = None,
        text_target: str | list[str] | None = None,
        return_tensors: str | None = "pt",
        padding: bool | str = True,
        padding_side: str | None = None,
        truncation: bool | None = None,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        add_special_tokens: bool = True,
        add_eos: bool = True,
        **kwargs: Any,
    ) -> BatchFeature:
        """Language-model inputs from texts with ``<fmri>`` markers and one scan per marker.

        Each text is tokenized (with the tokenizer's own special tokens, e.g. BOS, when
        ``add_special_tokens``), then each ``<fmri>`` marker id is replaced by ``<fmri_start>``, N
        ``<fmri>`` placeholders and ``<fmri_end>`` (N = :attr:`num_fmri_tokens`). Row ``s`` of
        ``fmri_codes`` belongs to the ``s``-th marker in reading order over the whole batch (text 0's
        markers first, left to right, then text 1's ...). Texts without markers and no scans give plain
        tokenization (text-only T2T batches). Without ``text``, ``fmri`` (with ``tr``) gives the feature
        extractor's ``fmri_values`` (B, T, R) and ``fmri_mask`` (B, T) (stage 1).

        Args:
            fmri: raw scans, one per marker: a (time, rois) array or a list of them (or the feature
                extractor's output); they go through :meth:`tokenize_fmri`. Not with ``fmri_codes``.
            text: a string or a list of strings. Write only ``<fmri>``; the delimiters are added here.
            tr: repetition time in seconds of the raw scans, one or one per scan.
            fmri_codes: pre-tokenized codes, one row per marker: (S, N) integers as a tensor, an array,
                a list of lists or the int16 ``fmri_codes`` column (one (N,) row is taken as S = 1).
                :data:`PAD_CODE` (-1) marks padded time patches (whole patches only).
            text_target: one answer/descriptor per text, appended right after the text (after its fMRI
                blocks) and tokenized on its own without special tokens: no space is inserted, so
                end the prompt or start the target with one if the language model writes words with a
                leading space (byte-level BPE). Its tokens, then EOS (when ``add_eos``), are the only
                tokens labelled; ``labels`` is :data:`IGNORE_INDEX` (-100) on the prompt, the fMRI
                blocks and the padding.
            return_tensors: ``"pt"`` (default), ``"np"`` or ``None`` (lists).
            padding: ``True``/``"longest"``, ``"max_length"`` (needs ``max_length``) or
                ``False``/``"do_not_pad"`` (then rows of different lengths need ``return_tensors=None``).
            padding_side: ``"left"`` or ``"right"``; default the tokenizer's ``padding_side``.
            truncation: cut rows longer than ``max_length`` on the tokenizer's ``truncation_side``.
                ``None`` (default) means ``True`` when ``max_length`` is given. Truncation never cuts
                an fMRI block, nor (with ``text_target``) the prompt on the right or the target on the
                left: a ``max_length`` too short for them is a ValueError. With ``max_length`` and
                ``truncation=False`` a longer row is a ValueError too.
            max_length: the longest row allowed (tokens), and the padded length for ``"max_length"``.
            pad_to_multiple_of: round the padded length up to a multiple of this.
            add_special_tokens: let the tokenizer add its special tokens (e.g. BOS) to each text.
            add_eos: end each target with the tokenizer's EOS token (labelled). Texts without a target
                never get an EOS here (they may be generation prompts).

        Returns:
            BatchFeature with ``input_ids`` and ``attention_mask`` (B, L) int64, ``fmri_codes``
            (S, N) int64 when the texts have markers, and ``labels`` (B, L) int64 with
            ``text_target``.

        Raises:
            ValueError: markers and scans differ in number (both counts are given); scans without
                markers or markers without scans; ``<fmri_start>``/``<fmri_end>`` written in a text;
                the tokenizer lacks the fMRI special tokens; invalid codes; ``max_length`` too short.
        """
        if kwargs:
            raise ValueError(
                f"Unknown option(s) {sorted(kwargs)} for FmriLMProcessor.__call__; it takes fmri, text, tr, fmri_codes, "
                "text_target, return_tensors, padding, padding_side, truncation, max_length, pad_to_multiple_of, "
                "add_special_tokens and add_eos."
            )
        if isinstance(fmri, str) or (isinstance(fmri, (list, tuple)) and fmri and isinstance(fmri[0], str)):
            raise ValueError(
                "fmri got text: the first positional argument is the scans. Pass text by keyword: "
                "processor(text='<fmri> ...', fmri=scans, tr=tr) or processor(text=..., fmri_codes=codes)."
            )
        if return_tensors not in ("pt", "np", None):
            raise ValueError(f"return_tensors must be 'pt', 'np' or None (lists), got {return_tensors!r}.")
        if text is None:
            features = self._features_without_text(
                fmri, tr, fmri_codes=fmri_codes, text_target=text_target, padding_side=padding_side,
                truncation=truncation, max_length=max_length, pad_to_multiple_of=pad_to_multiple_of,
            )  # fmt: skip
            if return_tensors == "pt":
                return features
            convert = torch.Tensor.numpy if return_tensors == "np" else torch.Tensor.tolist
            return BatchFeature(data={key: convert(value) for key, value in features.items()})
        tokenizer = self._require_text_tokenizer("processor(text=...)")
        texts = _as_text_list(text, "text")
        targets = None
        if text_target is not None:
            targets = _as_text_list(text_target, "text_target")
            if len(targets) != len(texts):
                raise ValueError(
                    f"text_target must hold one target per text: got {len(texts)} text(s) and {len(targets)} target(s)."
                )
        marker_counts = _marker_counts(texts, targets)
        codes = self._codes_for_markers(fmri, tr, fmri_codes, marker_counts)
        special_ids = self._fmri_special_token_ids() if codes is not None else None
        max_length = None if max_length is None else _positive_int(max_length, "max_length")
        truncation = _truncation_flag(truncation, max_length)
        padding_side = _side(tokenizer.padding_side if padding_side is None else padding_side, "padding_side")

        sequences = self._token_sequences(texts, targets, special_ids, add_special_tokens, add_eos)
        if max_length is not None:
            sequences = [
                _fit_to_max_length(sequence, max_length, truncation, tokenizer.truncation_side, index)
                for index, sequence in enumerate(sequences)
            ]
        data = _pad_sequences(
            sequences,
            with_labels=targets is not None,
            pad_token_id=tokenizer.pad_token_id,
            padding=padding,
            padding_side=padding_side,
            max_length=max_length,
            pad_to_multiple_of=pad_to_multiple_of,
            tensors=return_tensors is not None,
        )
        if codes is not None:
            data["fmri_codes"] = codes.numpy() if return_tensors is not None else codes.tolist()
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _features_without_text(self, fmri: Any, tr: Any, **text_options: Any) -> BatchFeature:
        """Stage-1 behaviour of ``__call__`` without text: the feature extractor's outputs."""
        if text_options.pop("fmri_codes") is not None:
            raise ValueError(
                f"fmri_codes were given without text: codes enter the language model through '{FMRI_TOKEN}' markers, "
                f"so pass text='{FMRI_TOKEN} ...' with one marker per row of codes."
            )
        given = sorted(name for name, value in text_options.items() if value is not None)
        if given:
            raise ValueError(f"Text options {given} were given without text; pass text=... too.")
        if fmri is None:
            if tr is not None:
                raise ValueError("tr was given without fmri; pass the scans too.")
            raise ValueError("Pass fmri (raw scans, with tr) and/or text.")
        return self.extract_features(fmri, tr)

    def _codes_for_markers(self, fmri: Any, tr: Any, fmri_codes: Any, marker_counts: list[int]) -> torch.Tensor | None:
        """(S, N) int64 codes, one row per marker, from raw scans or pre-tokenized codes; None without markers."""
        if fmri is not None and fmri_codes is not None:
            raise ValueError("Pass either fmri (raw scans, with tr) or fmri_codes (pre-tokenized), not both.")
        if fmri_codes is not None and tr is not None:
            raise ValueError("tr applies to raw scans only, but fmri_codes were given; drop tr.")
        if fmri is None and tr is not None:
            raise ValueError("tr was given without fmri; pass the scans too.")
        n_markers = sum(marker_counts)
        if fmri is None and fmri_codes is None:
            if n_markers:
                raise _count_mismatch(marker_counts, 0, "scans (fmri or fmri_codes)")
            return None
        if fmri is not None:
            features = self.extract_features(fmri, tr)
            if "scan_index" in features:
                raise ValueError(
                    "The feature extractor cuts sliding windows (crop_strategy='sliding'), which gives several code rows "
                    "per scan, so scans cannot be matched to markers. Use crop_strategy 'start' or 'center', or call "
                    "tokenize_fmri yourself and pass the rows you want as fmri_codes."
                )
            if features["fmri_values"].shape[0] != n_markers:
                raise _count_mismatch(marker_counts, int(features["fmri_values"].shape[0]), "scans (fmri)")
            return self.tokenize_fmri(features)
        codes = self._validated_codes(fmri_codes, allow_single_row=True)
        if codes.shape[0] != n_markers:
            raise _count_mismatch(marker_counts, int(codes.shape[0]), "rows of fmri_codes")
        return codes

    def _validated_codes(self, codes: Any, *, allow_single_row: bool = False) -> torch.Tensor:
        """Codes as a CPU int64 tensor (S, N), checked: shape, integer type, range, padding by whole patches."""
        codes = _as_code_tensor(codes)
        n_tokens = self.num_fmri_tokens
        n_rois = int(self.feature_extractor.n_rois)
        if allow_single_row and codes.ndim == 1 and codes.shape[0] == n_tokens:
            codes = codes[None]
        if codes.ndim != 2 or codes.shape[1] != n_tokens:
            raise ValueError(
                f"codes must be shaped (batch, num_tokens) = (B, {n_tokens}) ({n_tokens // n_rois} time patches x "
                f"{n_rois} ROIs, time-major), got {tuple(codes.shape)}."
            )
        if codes.numel() and int(codes.min()) < PAD_CODE:
            raise ValueError(
                f"codes must be token codes >= 0, or PAD_CODE ({PAD_CODE}) for padding; got {int(codes.min())}."
            )
        if self.fmri_tokenizer is not None and codes.numel():
            num_codes = int(self.fmri_tokenizer.config.num_codes)
            if int(codes.max()) >= num_codes:
                raise ValueError(
                    f"codes must lie in [0, {num_codes}) for this fMRI tokenizer (or be PAD_CODE), got values up to "
                    f"{int(codes.max())}; were they produced by another tokenizer?"
                )
        padded = (codes == PAD_CODE).view(codes.shape[0], n_tokens // n_rois, n_rois)
        partly = (padded.any(dim=2) & ~padded.all(dim=2)).nonzero()
        if partly.numel():
            scan, patch = partly[0].tolist()
            raise ValueError(
                f"Scan {scan}, time patch {patch} has PAD_CODE ({PAD_CODE}) for some ROIs but not all: a time patch is "
                "padding for every ROI or for none. These codes were not produced by tokenize_fmri."
            )
        return codes

    def _token_sequences(
        self,
        texts: list[str],
        targets: list[str] | None,
        special_ids: dict[str, int] | None,
        add_special_tokens: bool,
        add_eos: bool,
    ) -> list[_TokenSequence]:
        """Token ids (markers expanded), labels and protected spans of each text (+ target), unpadded."""
        tokenizer = self.tokenizer
        prompt_ids = tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]
        target_ids = None
        if targets is not None:
            target_ids = tokenizer(targets, add_special_tokens=False)["input_ids"]
            if add_eos and tokenizer.eos_token_id is None:
                raise ValueError(
                    "add_eos=True needs the tokenizer's eos_token, which is not set; set tokenizer.eos_token or pass "
                    "add_eos=False."
                )
        sequences = []
        for index, ids in enumerate(prompt_ids):
            ids = np.asarray(ids, dtype=np.int64)
            block_starts = np.zeros(0, dtype=np.int64)
            if special_ids is not None:
                ids, block_starts = _expand_markers(ids, special_ids, self.num_fmri_tokens, texts[index], index)
            prompt_length = len(ids)
            labels = None
            if target_ids is not None:
                target = np.asarray(target_ids[index], dtype=np.int64)
                if add_eos:
                    target = np.append(target, np.int64(tokenizer.eos_token_id))
                ids = np.concatenate([ids, target])
                labels = np.concatenate([np.full(prompt_length, IGNORE_INDEX, dtype=np.int64), target])
            if len(ids) == 0:
                raise ValueError(
                    f"Text {index} gives no tokens at all (an empty text without special tokens or target); a "
                    "language model needs at least one token per row."
                )
            sequences.append(
                _TokenSequence(ids, labels, block_starts, self.num_fmri_tokens + 2, prompt_length, targets is not None)
            )
        return sequences

    def apply_chat_template(
        self,
        conversation: list[dict[str, Any]] | list[list[dict[str, Any]]],
        chat_template: str | None = None,
        *,
        add_generation_prompt: bool = False,
        continue_final_message: bool = False,
        tokenize: bool = False,
        return_dict: bool = True,
        fmri: Any = None,
        tr: Any = None,
        fmri_codes: Any = None,
        text_target: str | list[str] | None = None,
        processor_kwargs: dict[str, Any] | None = None,
        **template_kwargs: Any,
    ) -> str | list[str] | BatchFeature | torch.Tensor:
        """Render a conversation (or a list of them) with the chat template, keeping the ``<fmri>`` markers.

        A message's ``content`` is a string, where ``<fmri>`` marks a scan, or a list of items
        ``{"type": "text", "text": ...}`` and ``{"type": "fmri"}``; such a list is joined into one
        string, each fMRI item becoming ``<fmri>``, with nothing inserted between items (write the
        spaces or newlines you want into the text items). The template is ``chat_template`` (a template
        string, or the name of one of the processor's templates), else the processor's
        ``chat_template``, else the text tokenizer's.

        Args:
            conversation: ``[{"role": ..., "content": ...}, ...]`` or a list of such conversations.
            add_generation_prompt / continue_final_message: as in the tokenizer's ``apply_chat_template``
                (the assistant header is appended after the last message when ``add_generation_prompt``).
            tokenize: also run :meth:`__call__` on the rendered text(s), without adding the tokenizer's
                special tokens (the template writes them), with ``fmri``/``tr``/``fmri_codes`` (one scan
                per marker, in reading order) and ``text_target``; ``processor_kwargs`` (e.g.
                ``{"padding_side": "left"}``) go to it too.
            return_dict: with ``tokenize``, return the whole BatchFeature (default; it holds
                ``fmri_codes``), or only ``input_ids`` when False.
            template_kwargs: extra variables for the template.

        Returns:
            The rendered string (a list of them for a list of conversations), or the tokenized inputs.
        """
        tokenizer = self._require_text_tokenizer("apply_chat_template")
        conversations, is_batched = _normalise_conversations(conversation)
        template = self._resolve_template(chat_template)
        rendered = tokenizer.apply_chat_template(
            conversations,
            chat_template=template,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
            tokenize=False,
            **template_kwargs,
        )
        rendered = [rendered] if isinstance(rendered, str) else list(rendered)
        for index, (messages, prompt) in enumerate(zip(conversations, rendered)):
            written = sum(str(message.get("content", "")).count(FMRI_TOKEN) for message in messages)
            if prompt.count(FMRI_TOKEN) != written:
                raise ValueError(
                    f"The chat template changed the number of '{FMRI_TOKEN}' markers in conversation {index}: "
                    f"{written} in the messages, {prompt.count(FMRI_TOKEN)} in the rendered text. Use a template that "
                    "writes each message's content unchanged."
                )
        if not tokenize:
            return rendered if is_batched else rendered[0]
        options = {"add_special_tokens": False, **(processor_kwargs or {})}
        inputs = self(
            fmri=fmri,
            text=rendered if is_batched else rendered[0],
            tr=tr,
            fmri_codes=fmri_codes,
            text_target=text_target,
            **options,
        )
        return inputs if return_dict else inputs["input_ids"]

    def _resolve_template(self, chat_template: str | None) -> str | None:
        """The template string to render: the argument (or a named processor template), the processor's, or
        None for the tokenizer's own; ValueError when there is none at all."""
        templates = self.chat_template
        if chat_template is not None:
            if isinstance(templates, dict) and chat_template in templates:
                return templates[chat_template]
            return chat_template
        if isinstance(templates, dict):
            if "default" not in templates:
                raise ValueError(
                    f"The processor has several chat templates ({sorted(templates)}) but none named 'default'; pass "
                    "chat_template=NAME."
                )
            return templates["default"]
        if templates is not None:
            return templates
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise ValueError(
                "Neither the processor nor its text tokenizer has a chat template; pass chat_template=... or set "
                "processor.chat_template (it is saved with the processor)."
            )
        return None

    def decode(self, *args: Any, **kwargs: Any) -> str:
        """The text tokenizer's ``decode`` (``skip_special_tokens=True`` drops the fMRI tokens)."""
        return self._require_text_tokenizer("decode").decode(*args, **kwargs)

    def batch_decode(self, *args: Any, **kwargs: Any) -> list[str]:
        """The text tokenizer's ``batch_decode`` (``skip_special_tokens=True`` drops the fMRI tokens)."""
        return self._require_text_tokenizer("batch_decode").batch_decode(*args, **kwargs)

    # ---- saving and loading -----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The content of ``processor_config.json`` (the fMRI tokenizer as a reference, not weights)."""
        output: dict[str, Any] = {"feature_extractor": self.feature_extractor.to_dict()}
        output["tokenizer"] = None if self.tokenizer is None else type(self.tokenizer).__name__
        output["fmri_tokenizer"] = None
        if self.fmri_tokenizer is not None:
            output["fmri_tokenizer"] = {
                "fmri_tokenizer_class": type(self.fmri_tokenizer).__name__,
                "subfolder": FMRI_TOKENIZER_FOLDER,
            }
        if getattr(self, "auto_map", None):
            output["auto_map"] = self.auto_map
        output["processor_class"] = type(self).__name__
        return output

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs: Any) -> list[str]:
        """Save the processor into ``save_directory``.

        Writes ``processor_config.json`` (feature extractor settings, references), the text
        tokenizer's files (if any, with the fMRI special tokens once added), ``chat_template.jinja``
        (if any: the processor's template replaces the tokenizer's, so both load with the processor's)
        and the fMRI tokenizer model
        into ``fmri_tokenizer/`` (with ``max_shard_size`` from ``kwargs``, if given). With
        ``register_for_auto_class`` (the default of this class) the code files are copied too, so
        the folder loads with ``trust_remote_code=True`` without fmri-lm installed.

        With ``push_to_hub=True`` the processor is then uploaded to ``repo_id`` (default: the
        folder's name); the other ``kwargs`` go to ``push_to_hub`` (``commit_message``, ``token``,
        ``private`` ...).

        Returns:
            The files and the ``fmri_tokenizer`` folder written (``processor_config.json``, ...).
        """
        max_shard_size = kwargs.pop("max_shard_size", None)
        save_directory = Path(save_directory)
        if save_directory.is_file():
            raise NotADirectoryError(f"{save_directory} is a file; save_pretrained needs a folder.")
        save_directory.mkdir(parents=True, exist_ok=True)
        written: list[str] = []
        if self._auto_class is not None:
            configs: list[Any] = [self.feature_extractor, self]
            if self.tokenizer is not None:
                configs.append(self.tokenizer.init_kwargs)
            custom_object_save(self, save_directory, config=configs)
        if self.feature_extractor._auto_class is not None:
            custom_object_save(self.feature_extractor, save_directory, config=self.feature_extractor)
        if self.tokenizer is not None:
            self.tokenizer._set_processor_class(type(self).__name__)
            written.extend(self.tokenizer.save_pretrained(save_directory))
            self.tokenizer.init_kwargs.pop("auto_map", None)
        if self.fmri_tokenizer is not None:
            shard = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
            self.fmri_tokenizer.save_pretrained(save_directory / FMRI_TOKENIZER_FOLDER, **shard)
            written.append(str(save_directory / FMRI_TOKENIZER_FOLDER))
        written.extend(self._save_chat_templates(save_directory))
        processor_file = save_directory / PROCESSOR_NAME
        self.to_json_file(processor_file)
        written.append(str(processor_file))
        if push_to_hub:
            repo_id = kwargs.pop("repo_id", save_directory.name)
            self.push_to_hub(repo_id, **kwargs)
        return list(dict.fromkeys(written))  # the tokenizer and the processor both write chat_template.jinja

    def _save_chat_templates(self, save_directory: Path) -> list[str]:
        """``chat_template.jinja`` (the default template) and ``chat_templates/NAME.jinja`` (the others)."""
        templates = self.chat_template
        if templates is None:
            return []
        if isinstance(templates, str):
            templates = {"default": templates}
        written = []
        for name, template in templates.items():
            if name == "default":
                path = save_directory / CHAT_TEMPLATE_FILE
            else:
                if Path(name).name != name or name in ("", ".", ".."):
                    raise ValueError(f"Invalid chat template name {name!r}: use a plain file name.")
                path = save_directory / CHAT_TEMPLATE_DIR / f"{name}.jinja"
                path.parent.mkdir(exist_ok=True)
            path.write_text(template, encoding="utf-8")
            written.append(str(path))
        return written

    @classmethod
    def get_processor_dict(
        cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """``processor_config.json`` as a dict, with the fMRI tokenizer reference replaced by the loaded model."""
        hub_kwargs = {key: kwargs[key] for key in _HUB_KWARGS if key in kwargs}
        subfolder = kwargs.get("subfolder", "")
        processor_dict, kwargs = super().get_processor_dict(pretrained_model_name_or_path, **kwargs)
        reference = processor_dict.get("fmri_tokenizer")
        if reference is not None:
            processor_dict["fmri_tokenizer"] = _load_fmri_tokenizer(
                pretrained_model_name_or_path, reference, subfolder, hub_kwargs
            )
        return processor_dict, kwargs

    @classmethod
    def _get_arguments_from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        processor_dict: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Any]:
        """[feature extractor, text tokenizer or None], as ``processor_config.json`` lists them."""
        processor_dict = processor_dict or {}
        if "feature_extractor" not in processor_dict:
            raise ValueError(
                f"{pretrained_model_name_or_path} has no feature extractor settings in {PROCESSOR_NAME}: it was not saved "
                "by FmriLMProcessor.save_pretrained."
            )
        subfolder = kwargs.pop("subfolder", "")
        hub_kwargs = {key: kwargs[key] for key in _HUB_KWARGS if key in kwargs}
        feature_extractor = FmriFeatureExtractor.from_pretrained(
            pretrained_model_name_or_path, subfolder=subfolder, **hub_kwargs
        )
        tokenizer = None
        if processor_dict.get("tokenizer") is not None:
            tokenizer = AutoTokenizer.from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)
        return [feature_extractor, tokenizer]


def _load_fmri_tokenizer(
    pretrained_model_name_or_path: str | os.PathLike, reference: Any, subfolder: str, hub_kwargs: dict[str, Any]
) -> FmriTokenizerModel:
    """The model that a ``processor_config.json`` reference names, from its subfolder."""
    if not isinstance(reference, Mapping) or "subfolder" not in reference:
        raise ValueError(
            f"{PROCESSOR_NAME} of {pretrained_model_name_or_path} has an invalid 'fmri_tokenizer' entry {reference!r}; "
            f"expected {{'fmri_tokenizer_class': 'FmriTokenizerModel', 'subfolder': '{FMRI_TOKENIZER_FOLDER}'}}."
        )
    class_name = reference.get("fmri_tokenizer_class")
    if class_name != FmriTokenizerModel.__name__:
        raise ValueError(
            f"{PROCESSOR_NAME} of {pretrained_model_name_or_path} names fmri_tokenizer_class {class_name!r}; this "
            f"version of fmri-lm loads only {FmriTokenizerModel.__name__}."
        )
    folder = f"{subfolder}/{reference['subfolder']}" if subfolder else str(reference["subfolder"])
    return FmriTokenizerModel.from_pretrained(pretrained_model_name_or_path, subfolder=folder, **hub_kwargs)


def _check_settings_agree(feature_extractor: Any, model: FmriTokenizerModel) -> None:
    mismatches = [
        f"{name}: feature extractor {getattr(feature_extractor, name)}, fMRI tokenizer {getattr(model.config, name)}"
        for name in _SHARED_SETTINGS
        if getattr(feature_extractor, name) != getattr(model.config, name)
    ]
    if mismatches:
        raise ValueError(
            "The feature extractor and the fMRI tokenizer disagree on " + "; ".join(mismatches) + ". Build the feature "
            "extractor with the tokenizer's settings, e.g. FmriFeatureExtractor(n_rois=config.n_rois, "
            "max_timepoints=config.max_timepoints, patch_size=config.patch_size, ...)."
        )


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def _as_code_tensor(codes: Any) -> torch.Tensor:
    """Integer codes (tensor, array, nested lists) as a CPU int64 tensor."""
    if isinstance(codes, torch.Tensor):
        tensor = codes.detach().cpu()
    else:
        try:
            array = np.asarray(codes)
        except ValueError:  # numpy refuses rows of different lengths
            array = np.empty(0, dtype=object)
        if array.dtype == object:
            raise ValueError("codes must be a rectangular (batch, num_tokens) array of integers; got ragged rows.")
        if array.dtype.kind not in "biufc":
            raise ValueError(f"codes must be integers (token codes), got dtype {array.dtype}.")
        tensor = torch.from_numpy(array)
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise ValueError(f"codes must be integers (token codes), got dtype {tensor.dtype}.")
    return tensor.long()


FmriLMProcessor.register_for_auto_class("AutoProcessor")


# ---- helpers of the text + fMRI path ---------------------------------------------------------------


@dataclass(frozen=True)
class _TokenSequence:
    """One row before padding: ids (L,), labels (L,) or None, and where its fMRI blocks are.

    ``block_starts`` are the positions of the ``<fmri_start>`` tokens; each block spans
    ``block_length`` = N + 2 tokens. ``prompt_length`` counts the tokens before the target.
    """

    ids: np.ndarray
    labels: np.ndarray | None
    block_starts: np.ndarray
    block_length: int
    prompt_length: int
    has_target: bool

    def cut(self, start: int, stop: int) -> _TokenSequence:
        """The tokens ``[start, stop)``; blocks are never cut (the caller checked)."""
        labels = None if self.labels is None else self.labels[start:stop]
        return _TokenSequence(
            self.ids[start:stop], labels, self.block_starts - start, self.block_length,
            max(self.prompt_length - start, 0), self.has_target,
        )  # fmt: skip


def _as_text_list(value: Any, name: str) -> list[str]:
    """A string or a list/tuple of strings as a list of strings."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and value and all(isinstance(item, str) for item in value):
        return list(value)
    raise ValueError(
        f"{name} must be a string or a non-empty list of strings, got {type(value).__name__}: {value!r:.80}."
    )


def _marker_counts(texts: list[str], targets: list[str] | None) -> list[int]:
    """``<fmri>`` markers per text; ValueError for delimiters written by hand or markers in targets."""
    for index, text in enumerate(texts):
        for token in (FMRI_START_TOKEN, FMRI_END_TOKEN):
            if token in text:
                raise ValueError(
                    f"Text {index} contains '{token}'. Write one '{FMRI_TOKEN}' per scan and nothing else: the processor "
                    f"adds '{FMRI_START_TOKEN}' and '{FMRI_END_TOKEN}' itself (is this text an already expanded one?)."
                )
    for index, target in enumerate(targets or []):
        if any(token in target for token in _FMRI_SPECIAL_TOKENS.values()):
            raise ValueError(
                f"text_target {index} contains an fMRI token; scans go in the text (the prompt), targets are plain text."
            )
    return [text.count(FMRI_TOKEN) for text in texts]


def _count_mismatch(marker_counts: list[int], n_scans: int, what: str) -> ValueError:
    per_text = ", ".join(f"text {index}: {count}" for index, count in enumerate(marker_counts))
    return ValueError(
        f"The text has {sum(marker_counts)} '{FMRI_TOKEN}' marker(s) ({per_text}) but {n_scans} {what} were given. "
        f"Pass exactly one scan per marker, in reading order over the batch, or put one '{FMRI_TOKEN}' in the text "
        "for each scan."
    )


def _truncation_flag(truncation: Any, max_length: int | None) -> bool:
    if truncation is None:
        return max_length is not None
    if not isinstance(truncation, bool):
        raise ValueError(
            f"truncation must be True, False or None, got {truncation!r}; truncation always cuts the tokenizer's "
            "truncation_side and never an fMRI block."
        )
    return truncation


def _side(value: Any, name: str) -> str:
    if value not in ("left", "right"):
        raise ValueError(f"{name} must be 'left' or 'right', got {value!r}.")
    return value


def _expand_markers(
    ids: np.ndarray, special_ids: dict[str, int], n_tokens: int, text: str, index: int
) -> tuple[np.ndarray, np.ndarray]:
    """Replace each marker id by start + ``n_tokens`` placeholders + end.

    Returns the expanded ids and the positions of the blocks' ``<fmri_start>`` tokens.
    """
    marker = special_ids["fmri_token_id"]
    is_marker = ids == marker
    if int(is_marker.sum()) != text.count(FMRI_TOKEN):
        raise ValueError(
            f"Text {index} has {text.count(FMRI_TOKEN)} '{FMRI_TOKEN}' marker(s) but the text tokenizer made "
            f"{int(is_marker.sum())} '{FMRI_TOKEN}' token(s) of it; the tokenizer normalises the marker away. Use a "
            "tokenizer whose added special tokens match verbatim."
        )
    for name in ("fmri_start_token_id", "fmri_end_token_id"):
        if bool((ids == special_ids[name]).any()):
            raise ValueError(
                f"Text {index} was tokenized with an fMRI delimiter token ({name}); write only '{FMRI_TOKEN}'."
            )
    repeats = np.where(is_marker, n_tokens + 2, 1)
    expanded = np.repeat(ids, repeats)
    block_starts = (np.cumsum(repeats) - repeats)[is_marker]
    expanded[block_starts] = special_ids["fmri_start_token_id"]
    expanded[block_starts + n_tokens + 1] = special_ids["fmri_end_token_id"]
    return expanded, block_starts


def _fit_to_max_length(
    sequence: _TokenSequence, max_length: int, truncation: bool, side: str, index: int
) -> _TokenSequence:
    """The sequence cut to ``max_length`` tokens on ``side``, or a ValueError saying why it cannot be."""
    length = len(sequence.ids)
    if length <= max_length:
        return sequence
    if not truncation:
        raise ValueError(
            f"Text {index} has {length} tokens, more than max_length={max_length}, and truncation=False; raise "
            "max_length or allow truncation."
        )
    side = _side(side, "the tokenizer's truncation_side")
    starts = sequence.block_starts
    if side == "right":
        block_end = int(starts.max()) + sequence.block_length if starts.size else 0
        needed = max(block_end, sequence.prompt_length if sequence.has_target else 0)
        if max_length < needed:
            cut = "an fMRI block" if max_length < block_end else "the prompt (only target tokens may be cut)"
            raise _too_short(index, length, max_length, side, cut, needed, starts.size, sequence.block_length)
        return sequence.cut(0, max_length)
    removed = length - max_length
    block_start = int(starts.min()) if starts.size else length
    keep_from = min(block_start, sequence.prompt_length if sequence.has_target else length)
    if removed > keep_from:
        cut = "an fMRI block" if removed > block_start else "the target"
        raise _too_short(index, length, max_length, side, cut, length - keep_from, starts.size, sequence.block_length)
    return sequence.cut(removed, length)


def _too_short(
    index: int, length: int, max_length: int, side: str, cut: str, needed: int, n_blocks: int, block_length: int
) -> ValueError:
    return ValueError(
        f"max_length={max_length} is too short for text {index} ({length} tokens): truncating on the {side} would cut "
        f"{cut}. It needs at least {needed} tokens ({n_blocks} fMRI block(s) of {block_length} tokens each, "
        "delimiters included). Raise max_length, shorten the text, or put fewer scans in one text."
    )


def _pad_sequences(
    sequences: list[_TokenSequence],
    *,
    with_labels: bool,
    pad_token_id: int | None,
    padding: Any,
    padding_side: str,
    max_length: int | None,
    pad_to_multiple_of: int | None,
    tensors: bool,
) -> dict[str, Any]:
    """``input_ids``, ``attention_mask`` (and ``labels``) as (B, L) int64 arrays, or lists of lists when
    unpadded rows of different lengths are allowed (``tensors`` False)."""
    try:
        strategy = _PADDING_STRATEGIES.get(getattr(padding, "value", padding))
    except TypeError:  # unhashable
        strategy = None
    if strategy is None:
        raise ValueError(f"padding must be True/'longest', 'max_length' or False/'do_not_pad', got {padding!r}.")
    lengths = [len(sequence.ids) for sequence in sequences]
    if strategy == "max_length":
        if max_length is None:
            raise ValueError("padding='max_length' needs max_length=...; or use padding=True (to the longest row).")
        target_length = max_length
    elif strategy == "longest":
        target_length = max(lengths)
    else:
        if len(set(lengths)) > 1:
            if tensors:
                raise ValueError(
                    f"The rows have different lengths ({min(lengths)}..{max(lengths)} tokens) and padding is off, so they "
                    "cannot form one tensor; pass padding=True, or return_tensors=None for lists."
                )
            data = {
                "input_ids": [sequence.ids.tolist() for sequence in sequences],
                "attention_mask": [[1] * length for length in lengths],
            }
            if with_labels:
                data["labels"] = [sequence.labels.tolist() for sequence in sequences]
            return data
        target_length = lengths[0]
    if pad_to_multiple_of is not None:
        multiple = _positive_int(pad_to_multiple_of, "pad_to_multiple_of")
        target_length = -(-target_length // multiple) * multiple
    if pad_token_id is None and min(lengths) < target_length:
        raise ValueError(
            "Padding is needed but the text tokenizer has no pad_token; set one (e.g. "
            "processor.tokenizer.pad_token = processor.tokenizer.eos_token: padding is never attended to nor labelled)."
        )
    input_ids = np.full((len(sequences), target_length), pad_token_id if pad_token_id is not None else 0, np.int64)
    attention_mask = np.zeros((len(sequences), target_length), np.int64)
    labels = np.full((len(sequences), target_length), IGNORE_INDEX, np.int64)
    for row, sequence in enumerate(sequences):
        length = len(sequence.ids)
        columns = slice(0, length) if padding_side == "right" else slice(target_length - length, target_length)
        input_ids[row, columns] = sequence.ids
        attention_mask[row, columns] = 1
        if with_labels:
            labels[row, columns] = sequence.labels
    data = {"input_ids": input_ids, "attention_mask": attention_mask}
    if with_labels:
        data["labels"] = labels
    if not tensors:
        data = {key: value.tolist() for key, value in data.items()}
    return data


def _normalise_conversations(conversation: Any) -> tuple[list[list[dict[str, Any]]], bool]:
    """A conversation or a list of them as a list of message lists whose contents are strings.

    Content items ``{"type": "text", "text": ...}`` and ``{"type": "fmri"}`` are joined into one
    string (fMRI items as ``<fmri>``, nothing in between); other item types are refused.
    """
    if isinstance(conversation, (list, tuple)) and conversation and isinstance(conversation[0], (list, tuple)):
        conversations, is_batched = list(conversation), True
    elif isinstance(conversation, (list, tuple)) and conversation and isinstance(conversation[0], Mapping):
        conversations, is_batched = [conversation], False
    else:
        raise ValueError(
            "conversation must be a list of messages [{'role': ..., 'content': ...}, ...] or a list of such lists, got "
            f"{type(conversation).__name__}."
        )
    normalised = []
    for index, messages in enumerate(conversations):
        rendered_messages = []
        for message in messages:
            if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
                raise ValueError(
                    f"Conversation {index} has a message without 'role' and 'content': {message!r:.80}; each message is "
                    "{'role': 'user', 'content': '<fmri> ...'}."
                )
            content = message["content"]
            if not isinstance(content, str):
                content = _join_content_items(content, index)
            rendered_messages.append({**message, "content": content})
        normalised.append(rendered_messages)
    return normalised, is_batched


def _join_content_items(items: Any, index: int) -> str:
    if not isinstance(items, (list, tuple)):
        raise ValueError(
            f"A message content in conversation {index} is a {type(items).__name__}; it must be a string or a list of "
            "{'type': 'text', 'text': ...} / {'type': 'fmri'} items."
        )
    pieces = []
    for item in items:
        kind = item.get("type") if isinstance(item, Mapping) else None
        if kind == "fmri":
            pieces.append(FMRI_TOKEN)
        elif kind == "text" and isinstance(item.get("text"), str):
            pieces.append(item["text"])
        else:
            raise ValueError(
                f"Unsupported content item {item!r:.80} in conversation {index}: this processor reads "
                "{'type': 'text', 'text': str} and {'type': 'fmri'} items (the scans themselves go to fmri= or "
                "fmri_codes=, one per fMRI item, in reading order)."
            )
    return "".join(pieces)
