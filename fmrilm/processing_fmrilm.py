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

This module imports only torch, numpy, transformers and its siblings, relatively, so
``save_pretrained`` can ship it as remote code (``trust_remote_code=True``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer, BatchFeature, PreTrainedTokenizerBase, ProcessorMixin
from transformers.dynamic_module_utils import custom_object_save
from transformers.utils import CHAT_TEMPLATE_DIR, CHAT_TEMPLATE_FILE, PROCESSOR_NAME

from .feature_extraction_fmrilm import FmriFeatureExtractor
from .modeling_fmri_tokenizer import FmriTokenizerModel

__all__ = ["FMRI_TOKENIZER_FOLDER", "PAD_CODE", "FmriLMProcessor"]

#: Subfolder of a saved processor that holds the fMRI tokenizer model.
FMRI_TOKENIZER_FOLDER = "fmri_tokenizer"
#: Code of a token whose time patch is padding.
PAD_CODE = -1
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

        Codes may be any integer tensor or array (e.g. the int16 ``fmri_codes`` column). Time patches
        whose codes are all :data:`PAD_CODE` are treated as padding (left out as attention keys, as
        in ``tokenize_fmri``) and come back as zeros.
        """
        model = self._require_fmri_tokenizer("decode_fmri")
        batch_size = _positive_int(batch_size, "batch_size")
        codes = _as_code_tensor(codes)
        config = model.config
        if codes.ndim != 2 or codes.shape[1] != config.num_tokens:
            raise ValueError(
                f"codes must be shaped (batch, num_tokens) = (B, {config.num_tokens}) ({config.num_time_patches} time "
                f"patches x {config.n_rois} ROIs, time-major), got {tuple(codes.shape)}."
            )
        if codes.numel() and int(codes.min()) < PAD_CODE:
            raise ValueError(
                f"codes must be token codes >= 0, or PAD_CODE ({PAD_CODE}) for padding; got {int(codes.min())}."
            )
        padded = (codes == PAD_CODE).view(codes.shape[0], config.num_time_patches, config.n_rois)
        partly = (padded.any(dim=2) & ~padded.all(dim=2)).nonzero()
        if partly.numel():
            scan, patch = partly[0].tolist()
            raise ValueError(
                f"Scan {scan}, time patch {patch} has PAD_CODE ({PAD_CODE}) for some ROIs but not all: a time patch is "
                "padding for every ROI or for none. These codes were not produced by tokenize_fmri."
            )
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

    def __call__(self, fmri: Any = None, text: Any = None, tr: Any = None, **text_kwargs: Any) -> BatchFeature:
        """Model inputs for fMRI and/or text (no fMRI codes: use :meth:`tokenize_fmri` for those).

        ``fmri`` (raw scans, with ``tr``) -> the feature extractor's ``fmri_values`` (B, T, R) and
        ``fmri_mask`` (B, T) as torch tensors; ``text`` -> the text tokenizer's outputs
        (``text_kwargs`` such as ``padding`` and ``return_tensors`` go to it). Both -> one
        BatchFeature with all keys. Expanding ``<fmri>`` placeholders in text into fMRI tokens is
        stage-2 work (issue 5) and not done here.
        """
        if fmri is None and text is None:
            raise ValueError("Pass fmri (raw scans, with tr) and/or text.")
        data: dict[str, Any] = {}
        if fmri is not None:
            data.update(self.extract_features(fmri, tr))
        elif tr is not None:
            raise ValueError("tr was given without fmri; pass the scans too.")
        if text is not None:
            if self.tokenizer is None:
                raise ValueError(
                    "This processor has no text tokenizer (stage 1); build it with tokenizer=AutoTokenizer.from_pretrained(...) "
                    "to process text."
                )
            data.update(self.tokenizer(text, **text_kwargs))
        elif text_kwargs:
            raise ValueError(f"Text options {sorted(text_kwargs)} were given without text.")
        return BatchFeature(data=data)

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
        tokenizer's files (if any), ``chat_template.jinja`` (if any) and the fMRI tokenizer model
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
        return written

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
        array = np.asarray(codes)
        if array.dtype == object:
            raise ValueError("codes must be a rectangular (batch, num_tokens) array of integers; got ragged rows.")
        tensor = torch.from_numpy(array)
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise ValueError(f"codes must be integers (token codes), got dtype {tensor.dtype}.")
    return tensor.long()


FmriLMProcessor.register_for_auto_class("AutoProcessor")
