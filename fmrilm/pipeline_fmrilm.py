"""Pipelines ``"fmri-to-text"`` and ``"zero-shot-fmri-classification"`` for :class:`FmriLMForCausalLM`.

``import fmrilm`` registers both tasks (:func:`register_pipelines`), so a folder written by
``model.save_pretrained(d)`` and ``processor.save_pretrained(d)`` is all that
``transformers.pipeline(task, model=d)`` needs::

    >>> import fmrilm
    >>> from transformers import pipeline
    >>> describe = pipeline("fmri-to-text", model="my-fmrilm")  # doctest: +SKIP
    >>> describe(bold, tr=0.72)  # bold: a (time, rois) array  # doctest: +SKIP
    [{'generated_text': 'Modularity is high ...'}]
    >>> classify = pipeline("zero-shot-fmri-classification", model="my-fmrilm")  # doctest: +SKIP
    >>> classify("sub-01_bold.nii.gz", candidate_labels=["Female", "Male"], question="What is the sex?")  # doctest: +SKIP
    [{'label': 'Male', 'score': 0.71}, {'label': 'Female', 'score': 0.29}]

:func:`save_for_pipelines` also writes ``custom_pipelines`` into ``config.json`` and copies this file
and its siblings (modeling, configuration, processing, scoring ...) into the folder, so that
``pipeline(task, model=d, trust_remote_code=True)`` works where fmri-lm is not installed. (Like
any folder whose config names custom pipelines, such a folder then needs ``trust_remote_code=True``
for those tasks, even where fmri-lm is installed: that is transformers' rule.)

Inputs (one per call, or a list of them; a list is batched ``batch_size`` at a time with left
padding, and gives the same results as one at a time):

- a (time, rois) scan: numpy array or torch tensor, with ``tr=`` (seconds) in the call;
- ``{"fmri": scan or path, "tr": seconds}`` (the dict's TR wins over a NIfTI header's);
- ``{"fmri_codes": codes}``: one pre-tokenized scan, (N,) or (1, N) integers (e.g. the int16
  ``fmri_codes`` column of ``fmrilm tokenize``'s datasets);
- a ``.npy`` path (a (time, rois) array; ``tr=`` in the call);
- a NIfTI path (``.nii``/``.nii.gz``, 4-D): averaged within the regions of the atlas that the
  processor's feature extractor records (``atlas``, e.g. ``"AAL2"``, whose image comes from
  ``fmrilm.sample_data``) or of ``atlas_image=`` (a 3-D label image; its labels, sorted, or those
  of ``atlas=``, are the model's ROIs in order); TR from the header unless given. Needs the
  ``fmrilm`` package (``pip install fmri-lm``).

Every input becomes fMRI codes with the processor's fMRI tokenizer (its feature extractor's crop;
``crop_strategy=`` overrides it), and one ``<fmri>`` prompt per input is rendered with the chat
template when the processor or its tokenizer has one (``chat_template="auto"``; ``"never"``,
``"always"``): the user turn plus the assistant header, as the stage-2/3 trainers render theirs
(a loaded processor carries its tokenizer's template, so both rules agree on saved models).

This module imports only torch, numpy, transformers and its siblings (relatively), so
``save_pretrained`` can ship it as remote code; NIfTI support imports ``fmrilm.nifti`` when needed.
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Iterable, Mapping, Sequence, Sized
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM, GenerationConfig, Pipeline
from transformers.dynamic_module_utils import custom_object_save
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.pipelines.pt_utils import PipelineDataset, PipelineIterator

from .processing_fmrilm import FMRI_TOKEN
from .scoring_fmrilm import score_candidates

__all__ = [
    "DEFAULT_DESCRIBE_PROMPT",
    "DEFAULT_HYPOTHESIS_TEMPLATE",
    "FMRI_TO_TEXT",
    "ZERO_SHOT_FMRI_CLASSIFICATION",
    "FmriToTextPipeline",
    "ZeroShotFmriClassificationPipeline",
    "custom_pipelines_config",
    "register_pipelines",
    "save_for_pipelines",
]

#: Task name of :class:`FmriToTextPipeline`.
FMRI_TO_TEXT = "fmri-to-text"
#: Task name of :class:`ZeroShotFmriClassificationPipeline`.
ZERO_SHOT_FMRI_CLASSIFICATION = "zero-shot-fmri-classification"
#: The prompt of ``"fmri-to-text"`` (the stage-2 descriptor prompt).
DEFAULT_DESCRIBE_PROMPT = "<fmri> Describe the brain activity in this scan."
#: The prompt of ``"zero-shot-fmri-classification"``, as ``fmrilm.tasks.build_prompt`` writes one-scan questions.
DEFAULT_HYPOTHESIS_TEMPLATE = "<fmri>\n### Question: {question}\n### Answer:"
#: Pipeline-level default generation settings (the model's generation config wins where it sets them).
DEFAULT_MAX_NEW_TOKENS = 128
_CHAT_TEMPLATE_MODES = ("auto", "always", "never")
_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_INPUT_KEYS = ("fmri", "tr", "fmri_codes")
#: Call arguments both pipelines take: how inputs become codes, and how the prompt is rendered.
_SCAN_OPTIONS = ("tr", "atlas_image", "atlas", "crop_strategy", "chat_template", "system", "chat_template_kwargs")
_GENERATION_KEYS = frozenset(key for key in vars(GenerationConfig()) if not key.startswith("_"))
_INSTALL_HINT = "pip install fmri-lm"


# --------------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------------


def _checked_prompt(prompt: Any, name: str) -> str:
    """A prompt string with exactly one ``<fmri>`` marker (the input's scan)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"{name} must be a non-empty string with one '{FMRI_TOKEN}' marker, got {prompt!r:.80}.")
    count = prompt.count(FMRI_TOKEN)
    if count != 1:
        raise ValueError(
            f"{name} must contain exactly one '{FMRI_TOKEN}' marker (where the scan goes), got {count}: {prompt!r:.120}. "
            f"Write it e.g. as '{DEFAULT_DESCRIBE_PROMPT}'."
        )
    return prompt


def _checked_chat_mode(mode: Any) -> str:
    if mode not in _CHAT_TEMPLATE_MODES:
        raise ValueError(
            f"chat_template must be one of {_CHAT_TEMPLATE_MODES} ('auto': use the processor's or tokenizer's chat "
            f"template when there is one), got {mode!r}."
        )
    return mode


def _uses_chat_template(processor: Any, mode: str) -> bool:
    """Whether prompts are rendered with a chat template (then the template writes the special tokens)."""
    has_template = (
        getattr(processor, "chat_template", None) is not None
        or getattr(processor.tokenizer, "chat_template", None) is not None
    )
    if mode == "always" and not has_template:
        raise ValueError(
            "chat_template='always' but neither the processor nor its tokenizer has a chat template; use 'auto' or "
            "'never', or set processor.chat_template."
        )
    return mode != "never" and has_template


def _rendered_prompt(
    processor: Any, prompt: str, mode: str, system: str | None, chat_template_kwargs: Mapping[str, Any] | None
) -> str:
    """The prompt as the model reads it: through the chat template (user turn + generation prompt) or as is."""
    if not _uses_chat_template(processor, mode):
        return prompt
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, **dict(chat_template_kwargs or {}))


def _default_question(labels: Sequence[str]) -> str:
    """The default question, "Which of these describes this scan: A, B or C?", from the candidate labels."""
    listed = ", ".join(labels[:-1]) + f" or {labels[-1]}"
    return f"Which of these describes this scan: {listed}?"


def _checked_candidate_labels(candidate_labels: Any) -> tuple[str, ...]:
    if candidate_labels is None:
        raise ValueError(
            "zero-shot-fmri-classification needs candidate_labels, e.g. classifier(scan, tr=0.72, "
            "candidate_labels=['Female', 'Male'])."
        )
    if isinstance(candidate_labels, str):
        candidate_labels = [label.strip() for label in candidate_labels.split(",")]
    if not isinstance(candidate_labels, (list, tuple)) or len(candidate_labels) == 0:
        raise ValueError(
            f"candidate_labels must be a non-empty list of answer strings, got {candidate_labels!r:.80}; pass e.g. "
            "['Female', 'Male']."
        )
    for index, label in enumerate(candidate_labels):
        if not isinstance(label, str) or not label.strip():
            raise ValueError(f"candidate_labels[{index}] is {label!r}; every candidate must be a non-empty string.")
    if len(candidate_labels) < 2:
        raise ValueError(
            f"candidate_labels holds one label ({candidate_labels[0]!r}); a zero-shot choice needs at least two answers "
            "(one label would always get probability 1)."
        )
    stripped = [label.strip() for label in candidate_labels]
    repeated = sorted({label for label in stripped if stripped.count(label) > 1})
    if repeated:
        raise ValueError(
            f"candidate_labels repeats {repeated}: each answer must appear once (their probabilities are compared). "
            "Remove the duplicates."
        )
    if stripped != list(candidate_labels):
        raise ValueError(
            f"candidate_labels {list(candidate_labels)} have leading or trailing spaces; write the answers without them "
            "(each is scored as ' ' + answer, as stage-3 targets are written)."
        )
    return tuple(candidate_labels)


def _hypothesis_prompt(template: Any, question: str | None, labels: Sequence[str]) -> str:
    """The zero-shot prompt: ``template`` with ``{question}`` replaced (default question from the labels)."""
    template = DEFAULT_HYPOTHESIS_TEMPLATE if template is None else template
    if not isinstance(template, str):
        raise ValueError(f"hypothesis_template must be a string, got {type(template).__name__}.")
    if question is not None and (not isinstance(question, str) or not question.strip()):
        raise ValueError(f"question must be a non-empty string, got {question!r:.80}.")
    if "{question}" not in template:
        if question is not None:
            raise ValueError(
                f"question={question!r:.60} was given but hypothesis_template has no '{{question}}' placeholder to put it "
                "in; add one, or drop question."
            )
        return _checked_prompt(template, "hypothesis_template")
    text = template.replace("{question}", question.strip() if question is not None else _default_question(labels))
    return _checked_prompt(text, "hypothesis_template (with the question)")


# --------------------------------------------------------------------------------------------------
# Inputs -> fMRI codes
# --------------------------------------------------------------------------------------------------


def _same_tr(first: float, second: float) -> bool:
    return math.isclose(first, second, rel_tol=1e-6, abs_tol=1e-9)


def _package_module(name: str, purpose: str) -> Any:
    """``fmrilm.<name>``, imported on demand (it is not remote code); ImportError with the fix otherwise."""
    try:
        return importlib.import_module(f"fmrilm.{name}")
    except ImportError as error:
        raise ImportError(
            f"{purpose} needs the fmri-lm package, which is not installed here (the pipeline runs as remote code): "
            f"`{_INSTALL_HINT}`. Or parcellate the scan yourself and pass the (time, rois) array with tr=."
        ) from error


def _parcellated_nifti(path: Path, processor: Any, atlas_image: Any, atlas: Any) -> tuple[np.ndarray, float | None]:
    """(time, rois) float32 ROI means of a 4-D NIfTI image in the model's atlas, and the header TR (or None)."""
    extractor = processor.feature_extractor
    n_rois = int(extractor.n_rois)
    atlas_name = getattr(extractor, "atlas", None)
    is_aal2 = isinstance(atlas_name, str) and atlas_name.strip().lower() == "aal2"
    nifti = _package_module("nifti", "Reading NIfTI input")
    atlases = _package_module("atlases", "Reading NIfTI input")
    if atlas_image is None:
        if not is_aal2:
            raise ValueError(
                f"NIfTI input {path} must be averaged within the model's {n_rois} atlas regions, but the processor "
                f"records atlas={atlas_name!r}, which has no built-in label image (AAL2 has). Pass atlas_image= (a 3-D "
                "label image in the scan's space; its labels, sorted, or those of atlas=, are the model's ROIs in "
                "order), or parcellate the scan yourself and pass the (time, rois) array."
            )
        sample_data = _package_module("sample_data", "The built-in AAL2 atlas image")
        try:
            atlas_image, _ = sample_data.aal2_atlas_files(download=False)
        except FileNotFoundError as error:
            raise FileNotFoundError(
                f"The AAL2 label image needed to parcellate {path} is not on this machine: run `fmrilm data fetch` (or "
                "fmrilm.sample_data.aal2_atlas_files(download=True)) once, or pass atlas_image=."
            ) from error
    if atlas is not None:
        atlas = atlases.load_atlas(atlas)
    elif is_aal2 and n_rois in (94, 120):
        atlas = atlases.aal2(n_rois)
    result = nifti.parcellate(path, atlas_image, atlas)
    if result.time_series.shape[1] != n_rois:
        raise ValueError(
            f"Parcellating {path} gave {result.time_series.shape[1]} regions but the model reads {n_rois} ROIs: the "
            f"atlas image has other labels than the model's atlas ({atlas_name!r}). Pass the atlas image the model "
            "was trained with (atlas_image=), and atlas= to pick and order its labels."
        )
    return result.time_series, result.tr


def _read_scan_file(path: Path, processor: Any, atlas_image: Any, atlas: Any) -> tuple[np.ndarray, float | None]:
    """A (time, rois) array from a ``.npy`` or NIfTI path, and the TR the file records (None when it has none)."""
    if not path.is_file():
        raise FileNotFoundError(f"The fMRI input {path} does not exist (or is not a file).")
    name = path.name.lower()
    if name.endswith(".npy"):
        return np.load(path, allow_pickle=False), None
    if name.endswith(_NIFTI_SUFFIXES):
        return _parcellated_nifti(path, processor, atlas_image, atlas)
    raise ValueError(
        f"Unknown fMRI file type {path.name!r}: the pipeline reads .npy files (a (time, rois) array) and NIfTI images "
        "(.nii, .nii.gz, 4-D). Load other formats yourself and pass the (time, rois) array with tr=."
    )


def _single_row_codes(codes: Any, n_tokens: int) -> torch.Tensor:
    """Pre-tokenized codes of one scan as a (1, N) int64 tensor (the processor checks the values)."""
    tensor = codes.detach().cpu() if isinstance(codes, torch.Tensor) else torch.as_tensor(np.asarray(codes))
    if tensor.ndim == 1:
        tensor = tensor[None]
    if tensor.ndim != 2 or tensor.shape != (1, n_tokens):
        raise ValueError(
            f"fmri_codes of one input must be one scan's codes, shaped ({n_tokens},) or (1, {n_tokens}), got "
            f"{tuple(tensor.shape)}; pass several scans as a list of inputs, one {{'fmri_codes': row}} each."
        )
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise ValueError(f"fmri_codes must be integer token codes, got dtype {tensor.dtype}.")
    return tensor.long()


def _input_codes(
    item: Any,
    processor: Any,
    *,
    tr: Any,
    atlas_image: Any,
    atlas: Any,
    crop_strategy: str | None,
) -> torch.Tensor:
    """One pipeline input -> its fMRI codes (1, N) int64 on the CPU."""
    item_tr = None
    if isinstance(item, Mapping):
        unknown = sorted(set(map(str, item)) - set(_INPUT_KEYS))
        if unknown:
            raise ValueError(
                f"Unknown input key(s) {unknown}: an input dict is {{'fmri': scan or path, 'tr': seconds}} or "
                "{'fmri_codes': codes}."
            )
        if "fmri_codes" in item:
            if "fmri" in item or "tr" in item:
                raise ValueError(
                    "An input dict holds 'fmri_codes' (pre-tokenized) together with 'fmri' or 'tr'; give either the "
                    "codes alone or the raw scan with its tr."
                )
            return _single_row_codes(item["fmri_codes"], processor.num_fmri_tokens)
        if "fmri" not in item:
            raise ValueError("An input dict needs 'fmri' (a (time, rois) scan or a file path) or 'fmri_codes'.")
        item, item_tr = item["fmri"], item.get("tr")
    file_tr = None
    if isinstance(item, (str, os.PathLike)):
        item, file_tr = _read_scan_file(Path(item), processor, atlas_image, atlas)
    elif isinstance(item, (list, tuple)):
        raise ValueError(
            f"An input is a {type(item).__name__}; a scan must be a (time, rois) numpy array or torch tensor (wrap "
            "nested lists with np.asarray), and several inputs go in a list, one scan each."
        )
    elif not isinstance(item, (np.ndarray, torch.Tensor)):
        raise ValueError(
            f"Unsupported fMRI input of type {type(item).__name__}: pass a (time, rois) array or tensor, a .npy or "
            "NIfTI path, {'fmri': ..., 'tr': ...} or {'fmri_codes': ...}."
        )
    scan_tr = _resolved_tr(item_tr, file_tr, tr)
    extractor = processor.feature_extractor
    strategy = crop_strategy if crop_strategy is not None else getattr(extractor, "crop_strategy", None)
    if strategy == "sliding":
        raise ValueError(
            "The feature extractor cuts sliding windows (crop_strategy='sliding'), which makes several code rows per "
            "scan; pass crop_strategy='start', 'center' or 'random' to the pipeline call."
        )
    options = {} if crop_strategy is None else {"crop_strategy": crop_strategy}
    return processor.tokenize_fmri([item], tr=scan_tr, **options)


def _resolved_tr(item_tr: Any, file_tr: float | None, call_tr: Any) -> Any:
    """The TR of one scan: the input dict's, else the file's, else the call's; ValueError if none or in conflict."""
    if item_tr is not None:
        return item_tr
    if file_tr is not None:
        if call_tr is not None and not (isinstance(call_tr, (int, float)) and _same_tr(float(call_tr), file_tr)):
            raise ValueError(
                f"tr={call_tr!r} was given but the file's header records TR {file_tr:g} s. To override the header, pass "
                "this input as {'fmri': path, 'tr': seconds}; otherwise drop tr=."
            )
        return file_tr
    if call_tr is None:
        raise ValueError(
            "This scan has no repetition time: pass tr= (seconds) to the pipeline call, or give the input as "
            "{'fmri': scan, 'tr': seconds}."
        )
    return call_tr


def _concatenated_items(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Collate preprocessed inputs: tensors are concatenated along rows, lists joined (prompts stay strings)."""
    batch: dict[str, Any] = {}
    for key, first in items[0].items():
        if isinstance(first, torch.Tensor):
            batch[key] = torch.cat([item[key] for item in items])
        else:
            batch[key] = [value for item in items for value in item[key]]
    return batch


# --------------------------------------------------------------------------------------------------
# The pipelines
# --------------------------------------------------------------------------------------------------


class _FmriPipeline(Pipeline):
    """What both pipelines share: the processor, inputs -> codes and prompts, batching with left padding."""

    #: The task name the pipeline is registered under.
    _task_name: str

    # Only our processor is loaded (tokenizer and feature extractor are its parts); transformers
    # would otherwise load the bare text tokenizer.
    _load_processor = True
    _load_tokenizer = False
    _load_feature_extractor = False
    _load_image_processor = False
    _load_video_processor = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        processor = self.processor
        if processor is None or not hasattr(processor, "tokenize_fmri"):
            raise ValueError(
                f"The {self.task or type(self).__name__} pipeline needs the model's FmriLMProcessor, got "
                f"{type(processor).__name__}: save it next to the model (processor.save_pretrained(folder)) and call "
                "pipeline(task, model=folder), or pass processor=FmriLMProcessor.from_pretrained(folder)."
            )
        if processor.tokenizer is None or processor.fmri_tokenizer is None:
            missing = "text tokenizer" if processor.tokenizer is None else "fMRI tokenizer (stage 1)"
            raise ValueError(
                f"The processor has no {missing}; the pipelines need a stage-2/3 processor with both (the one saved "
                "with the language model)."
            )
        self.tokenizer = processor.tokenizer
        self.feature_extractor = processor.feature_extractor
        processor.fmri_tokenizer.to(self.device)

    def _split_scan_options(
        self, kwargs: dict[str, Any], takes: str, allowed: frozenset[str] = frozenset()
    ) -> dict[str, Any]:
        """Remove the :data:`_SCAN_OPTIONS` from a call's ``kwargs`` and return them; what is left must be in
        ``allowed`` (ValueError naming what the pipeline ``takes`` otherwise)."""
        scan_options = {name: kwargs.pop(name) for name in _SCAN_OPTIONS if name in kwargs}
        unknown = sorted(set(kwargs) - allowed)
        if unknown:
            raise ValueError(f"Unknown option(s) {unknown} for the {self._task_name} pipeline; it takes {takes}.")
        return scan_options

    def _sanitize_scan_options(
        self,
        params: dict[str, Any],
        forward_params: dict[str, Any],
        *,
        tr: Any = None,
        atlas_image: Any = None,
        atlas: Any = None,
        crop_strategy: str | None = None,
        chat_template: str | None = None,
        system: str | None = None,
        chat_template_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        """Put the given input and prompt options into the preprocess ``params`` (and the chat-template mode,
        which decides whether special tokens are added, into ``forward_params`` too)."""
        if crop_strategy is not None and not isinstance(crop_strategy, str):
            raise ValueError(f"crop_strategy must be 'start', 'center' or 'random', got {crop_strategy!r}.")
        if chat_template is not None:
            params["chat_template"] = forward_params["chat_template"] = _checked_chat_mode(chat_template)
        if system is not None and not isinstance(system, str):
            raise ValueError(f"system must be a string (the system message), got {type(system).__name__}.")
        if chat_template_kwargs is not None and not isinstance(chat_template_kwargs, Mapping):
            raise ValueError(f"chat_template_kwargs must be a dict, got {type(chat_template_kwargs).__name__}.")
        given = dict(tr=tr, atlas_image=atlas_image, atlas=atlas, crop_strategy=crop_strategy, system=system,
                     chat_template_kwargs=chat_template_kwargs)  # fmt: skip
        params.update({name: value for name, value in given.items() if value is not None})

    def _model_inputs(
        self,
        inputs: Any,
        prompt: str,
        *,
        chat_template: str = "auto",
        system: str | None = None,
        chat_template_kwargs: Mapping[str, Any] | None = None,
        tr: Any = None,
        atlas_image: Any = None,
        atlas: Any = None,
        crop_strategy: str | None = None,
    ) -> dict[str, Any]:
        """One input and its prompt -> ``{"prompt": [rendered prompt], "fmri_codes": (1, N)}``."""
        codes = _input_codes(
            inputs, self.processor, tr=tr, atlas_image=atlas_image, atlas=atlas, crop_strategy=crop_strategy
        )
        rendered = _rendered_prompt(self.processor, prompt, chat_template, system, chat_template_kwargs)
        return {"prompt": [rendered], "fmri_codes": codes}

    def __call__(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(inputs, tuple):
            inputs = list(inputs)
        if isinstance(inputs, list) and not inputs:
            raise ValueError("The pipeline got an empty list of inputs; pass at least one scan.")
        return super().__call__(inputs, *args, **kwargs)

    def get_iterator(
        self,
        inputs: Iterable[Any],
        num_workers: int,
        batch_size: int,
        preprocess_params: dict[str, Any],
        forward_params: dict[str, Any],
        postprocess_params: dict[str, Any],
    ) -> PipelineIterator:
        """Inputs -> batches of ``batch_size`` (prompts left-padded in ``_forward``) -> one output per input.

        The base class pads with the tokenizer's padding side; generation and candidate scoring need
        the prompts to end in the last column, so batches are concatenated here and padded on the
        left by the processor. Streams (generators) are preprocessed in the main process.
        """
        if isinstance(inputs, Sized):
            dataset = PipelineDataset(inputs, self.preprocess, preprocess_params)
        else:
            dataset, num_workers = PipelineIterator(inputs, self.preprocess, preprocess_params), 0
        loader = DataLoader(dataset, num_workers=num_workers, batch_size=batch_size, collate_fn=_concatenated_items)
        outputs = PipelineIterator(loader, self.forward, forward_params, loader_batch_size=batch_size)
        return PipelineIterator(outputs, self.postprocess, postprocess_params)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Save model, processor and pipeline code so that the folder loads as this pipeline (see
        :func:`save_for_pipelines`)."""
        save_for_pipelines(self.model, self.processor, save_directory, **kwargs)


class FmriToTextPipeline(_FmriPipeline):
    r"""``"fmri-to-text"``: a scan in, the model's description of it out (greedy unless told otherwise).

    Call arguments (at construction or per call):
        tr: repetition time in seconds of inputs that do not carry one.
        prompt: the instruction, with one ``<fmri>`` (default :data:`DEFAULT_DESCRIBE_PROMPT`).
        chat_template: ``"auto"`` (default), ``"always"`` or ``"never"``; system, chat_template_kwargs:
            the system message and template variables when a chat template renders the prompt.
        atlas_image, atlas: the label image (and atlas spec/name) for NIfTI inputs.
        crop_strategy: ``"start"``, ``"center"`` or ``"random"`` (default: the feature extractor's).
        max_new_tokens, generate_kwargs (a dict), or any ``GenerationConfig`` field: generation settings.
        batch_size: inputs per forward pass for a list of inputs.

    Returns:
        For each input a list ``[{"generated_text": str}]`` (one entry per returned sequence): the new
        tokens only, special tokens dropped, surrounding spaces stripped.
    """

    _task_name = FMRI_TO_TEXT
    _pipeline_calls_generate = True
    _default_generation_config = GenerationConfig(max_new_tokens=DEFAULT_MAX_NEW_TOKENS)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Defaults only where neither the call nor the model's generation config sets them.
        tokenizer = self.processor.tokenizer
        pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        for name, token_id in (("pad_token_id", pad_token_id), ("eos_token_id", tokenizer.eos_token_id)):
            if token_id is not None:
                self._generation_defaults.setdefault(name, token_id)

    def _sanitize_parameters(
        self,
        prompt: str | None = None,
        max_new_tokens: int | None = None,
        generate_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """``kwargs``: the :data:`_SCAN_OPTIONS` (see :meth:`_sanitize_scan_options`) and GenerationConfig fields."""
        takes = (
            "tr, prompt, chat_template, system, chat_template_kwargs, atlas_image, atlas, crop_strategy, "
            "max_new_tokens, generate_kwargs and GenerationConfig fields"
        )
        scan_options = self._split_scan_options(kwargs, takes, allowed=_GENERATION_KEYS)
        preprocess: dict[str, Any] = {}
        forward: dict[str, Any] = {}
        if prompt is not None:
            preprocess["prompt"] = _checked_prompt(prompt, "prompt")
        self._sanitize_scan_options(preprocess, forward, **scan_options)
        if generate_kwargs is not None and not isinstance(generate_kwargs, Mapping):
            raise ValueError(
                f"generate_kwargs must be a dict of generate() arguments, got {type(generate_kwargs).__name__}."
            )
        settings = {**dict(generate_kwargs or {}), **kwargs}
        if max_new_tokens is not None:
            if "max_new_tokens" in settings:
                raise ValueError("max_new_tokens is given twice (argument and generate_kwargs); give it once.")
            settings["max_new_tokens"] = max_new_tokens
        # Only what is given: a call's parameters are merged over those given at construction.
        if settings:
            forward["generate_kwargs"] = settings
        return preprocess, forward, {}

    def preprocess(self, inputs: Any, prompt: str = DEFAULT_DESCRIBE_PROMPT, **scan_options: Any) -> dict[str, Any]:
        """One input -> ``{"prompt": [rendered prompt], "fmri_codes": (1, N)}`` (``scan_options``: see
        :meth:`_model_inputs`)."""
        return self._model_inputs(inputs, prompt, **scan_options)

    def _forward(
        self,
        model_inputs: dict[str, Any],
        chat_template: str = "auto",
        generate_kwargs: Mapping[str, Any] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Greedy (or as configured) generation for a batch of left-padded prompts; the new tokens (B, k, T)."""
        add_special_tokens = not _uses_chat_template(self.processor, chat_template)
        inputs = self.processor(
            text=model_inputs["prompt"], fmri_codes=model_inputs["fmri_codes"], padding=True, padding_side="left",
            add_special_tokens=add_special_tokens, return_tensors="pt",
        )  # fmt: skip
        inputs = {name: tensor.to(self.device) for name, tensor in inputs.items()}
        settings = self._prepare_generate_kwargs(dict(generate_kwargs or {}))
        generated = self.model.generate(**inputs, **settings)
        new_tokens = generated[:, inputs["input_ids"].shape[1] :]
        batch = inputs["input_ids"].shape[0]
        return {"generated_ids": new_tokens.reshape(batch, -1, new_tokens.shape[-1])}

    def postprocess(self, model_outputs: dict[str, torch.Tensor]) -> list[dict[str, str]]:
        sequences = model_outputs["generated_ids"][0]
        texts = self.processor.batch_decode(sequences, skip_special_tokens=True)
        return [{"generated_text": text.strip()} for text in texts]


class ZeroShotFmriClassificationPipeline(_FmriPipeline):
    r"""``"zero-shot-fmri-classification"``: which candidate answer the model finds most likely for a scan.

    Each candidate ``c`` is scored by its log-likelihood ``log P(" " + c + EOS | prompt)`` (one prefill
    per prompt, :func:`score_candidates`); the scores are the softmax of these over the candidates,
    so they sum to 1 (SPEC B13: probabilities, not parsed text).

    Call arguments (at construction or per call):
        candidate_labels: the answers (at least two, distinct), e.g. ``["Female", "Male"]``.
        question: put into the template's ``{question}`` (default "Which of these describes this
            scan: A or B?").
        hypothesis_template: the prompt, with one ``<fmri>`` and usually ``{question}`` (default
            :data:`DEFAULT_HYPOTHESIS_TEMPLATE`, the stage-3 prompt format).
        normalize: ``"sum"`` (default: the answer's log-likelihood) or ``"mean"`` (per token).
        tr, atlas_image, atlas, crop_strategy, chat_template, system, chat_template_kwargs: as in
            :class:`FmriToTextPipeline`.

    Returns:
        For each input ``[{"label": str, "score": float}, ...]``, sorted by score, highest first.
    """

    _task_name = ZERO_SHOT_FMRI_CLASSIFICATION

    def _sanitize_parameters(
        self,
        candidate_labels: Sequence[str] | None = None,
        question: str | None = None,
        hypothesis_template: str | None = None,
        normalize: str | None = None,
        **kwargs: Any,
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """``kwargs``: the :data:`_SCAN_OPTIONS` (see :meth:`_sanitize_scan_options`)."""
        takes = (
            "candidate_labels, question, hypothesis_template, normalize, tr, chat_template, system, "
            "chat_template_kwargs, atlas_image, atlas and crop_strategy"
        )
        scan_options = self._split_scan_options(kwargs, takes)
        preprocess: dict[str, Any] = {}
        forward: dict[str, Any] = {}
        postprocess: dict[str, Any] = {}
        if candidate_labels is not None:
            labels = _checked_candidate_labels(candidate_labels)
            preprocess["candidate_labels"] = forward["candidate_labels"] = postprocess["candidate_labels"] = labels
        if question is not None:
            preprocess["question"] = question
        if hypothesis_template is not None:
            preprocess["hypothesis_template"] = hypothesis_template
        if normalize is not None:
            if normalize not in ("sum", "mean"):
                raise ValueError(f"normalize must be 'sum' or 'mean', got {normalize!r}.")
            forward["normalize"] = normalize
        self._sanitize_scan_options(preprocess, forward, **scan_options)
        return preprocess, forward, postprocess

    def __call__(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        if "candidate_labels" not in kwargs and "candidate_labels" not in self._forward_params:
            _checked_candidate_labels(None)
        return super().__call__(inputs, *args, **kwargs)

    def preprocess(
        self,
        inputs: Any,
        candidate_labels: tuple[str, ...] = (),
        question: str | None = None,
        hypothesis_template: str | None = None,
        **scan_options: Any,
    ) -> dict[str, Any]:
        """One input -> ``{"prompt": [rendered prompt], "fmri_codes": (1, N)}`` (``scan_options``: see
        :meth:`_model_inputs`)."""
        prompt = _hypothesis_prompt(hypothesis_template, question, candidate_labels)
        return self._model_inputs(inputs, prompt, **scan_options)

    def _forward(
        self,
        model_inputs: dict[str, Any],
        candidate_labels: tuple[str, ...] = (),
        normalize: str = "sum",
        chat_template: str = "auto",
    ) -> dict[str, torch.Tensor]:
        """Log-likelihood of every candidate after every prompt of the batch: (B, C) float32."""
        prompts = model_inputs["prompt"]
        scores = score_candidates(
            self.model, self.processor, prompts, model_inputs["fmri_codes"], list(candidate_labels),
            add_special_tokens=not _uses_chat_template(self.processor, chat_template), batch_size=len(prompts),
            normalize=normalize,
        )  # fmt: skip
        return {"log_likelihoods": torch.from_numpy(scores)}

    def postprocess(
        self, model_outputs: dict[str, torch.Tensor], candidate_labels: tuple[str, ...] = ()
    ) -> list[dict[str, Any]]:
        probabilities = torch.softmax(model_outputs["log_likelihoods"][0].double(), dim=0).tolist()
        ranked = sorted(zip(candidate_labels, probabilities), key=lambda pair: -pair[1])
        return [{"label": label, "score": score} for label, score in ranked]


# --------------------------------------------------------------------------------------------------
# Registration and saving
# --------------------------------------------------------------------------------------------------

_PIPELINE_CLASSES = {
    FMRI_TO_TEXT: FmriToTextPipeline,
    ZERO_SHOT_FMRI_CLASSIFICATION: ZeroShotFmriClassificationPipeline,
}


def register_pipelines() -> None:
    """Register both tasks with transformers (``pipeline(task, ...)``): AutoModelForCausalLM, type "multimodal".

    Idempotent: a task already registered with the same class is left alone.
    """
    for task, pipeline_class in _PIPELINE_CLASSES.items():
        registered = PIPELINE_REGISTRY.supported_tasks.get(task)
        if registered is not None and registered.get("impl") is pipeline_class:
            continue
        PIPELINE_REGISTRY.register_pipeline(
            task, pipeline_class=pipeline_class, pt_model=AutoModelForCausalLM, type="multimodal"
        )


def custom_pipelines_config() -> dict[str, dict[str, Any]]:
    """The ``custom_pipelines`` entry of ``config.json`` that makes both tasks loadable as remote code."""
    module = Path(__file__).stem
    return {
        task: {"impl": f"{module}.{pipeline_class.__name__}", "pt": ["AutoModelForCausalLM"], "type": "multimodal"}
        for task, pipeline_class in _PIPELINE_CLASSES.items()
    }


def save_for_pipelines(model: Any, processor: Any, save_directory: str | os.PathLike, **save_kwargs: Any) -> Path:
    """Save ``model`` and ``processor`` into one folder that both pipelines load, with or without fmri-lm.

    Writes what ``model.save_pretrained`` and ``processor.save_pretrained`` write (weights, configs,
    tokenizer, ``fmri_tokenizer/``, their remote code) with ``custom_pipelines`` in ``config.json``
    (naming both tasks; the model's own config is left as it was) and copies this file and
    ``scoring_fmrilm.py`` next to them.
    Then, in any process::

        pipeline("fmri-to-text", model=folder, trust_remote_code=True)

    and, with fmri-lm imported, ``pipeline(task, model=folder)`` for a folder saved without this
    helper (transformers asks for ``trust_remote_code`` whenever ``config.json`` names custom pipelines).

    Args:
        model: an ``FmriLMForCausalLM`` (merge a PEFT model first: ``model.merge_and_unload()``).
        processor: its ``FmriLMProcessor``.
        save_directory: the folder (created if needed).
        save_kwargs: passed to ``model.save_pretrained`` (e.g. ``max_shard_size``).

    Returns:
        The folder.
    """
    if getattr(model, "peft_config", None) is not None and not hasattr(model, "fmri_position_ids"):
        raise ValueError(
            "model is a PEFT model; merge the adapters first (model = model.merge_and_unload()) and save the result, "
            "or save the adapter with model.save_pretrained and the base model separately."
        )
    if getattr(getattr(model, "config", None), "model_type", None) != "fmri_lm":
        raise ValueError(
            f"save_for_pipelines needs an FmriLMForCausalLM (config.model_type 'fmri_lm'), got {type(model).__name__}."
        )
    if processor is None or not hasattr(processor, "tokenize_fmri"):
        raise ValueError(
            f"save_for_pipelines needs the model's FmriLMProcessor, got {type(processor).__name__}; the pipelines read "
            "scans through its fMRI tokenizer."
        )
    directory = Path(save_directory)
    if directory.is_file():
        raise NotADirectoryError(f"{directory} is a file; save_for_pipelines needs a folder.")
    directory.mkdir(parents=True, exist_ok=True)
    # Only this folder names the pipelines: the model's config is restored, so that a later plain
    # model.save_pretrained does not name pipeline code it does not ship.
    had_custom_pipelines = "custom_pipelines" in vars(model.config)
    previous = getattr(model.config, "custom_pipelines", None)
    model.config.custom_pipelines = custom_pipelines_config()
    try:
        model.save_pretrained(directory, **save_kwargs)
    finally:
        if had_custom_pipelines:
            model.config.custom_pipelines = previous
        else:
            del model.config.custom_pipelines
    processor.save_pretrained(directory)
    custom_object_save(FmriToTextPipeline, directory)  # this file and every sibling it imports relatively
    return directory
