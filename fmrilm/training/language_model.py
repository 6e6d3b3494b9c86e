"""Language-model helpers shared by the stage-2 and stage-3 trainers (and the evaluation).

* :func:`load_causal_lm`: ``AutoModelForCausalLM.from_pretrained`` that refuses partially random weights (SPEC B12);
* :func:`load_fmri_lm`: the same strictness for a saved :class:`~fmrilm.modeling_fmrilm.FmriLMForCausalLM`;
* :class:`LoraSettings`, :func:`lora_target_modules`, :func:`apply_lora`: LoRA through PEFT's own API
  (``get_peft_model``), adapters on the LM's attention and MLP projections only;
* :func:`render_prompt`: a user prompt with ``<fmri>`` markers, through the chat template when there is one;
* :func:`fmri_model`: the :class:`FmriLMForCausalLM` inside a PEFT wrapper;
* :func:`describe_scans`: batched greedy generation from pre-tokenized scans;
* :func:`export_best`: the best weights of a run written as a plain (merged) model, plus the adapter.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

__all__ = [
    "FMRI_MODULES",
    "LoraSettings",
    "apply_lora",
    "describe_scans",
    "export_best",
    "fmri_model",
    "load_causal_lm",
    "load_fmri_lm",
    "lora_target_modules",
    "parameter_counts",
    "render_prompt",
]

#: Modules of FmriLMForCausalLM that are new (not in the LM); stage 2 trains them in full under LoRA.
FMRI_MODULES = ("fmri_embed", "roi_embed", "fmri_head")
_LOADING_PROBLEMS = ("missing_keys", "unexpected_keys", "mismatched_keys")


@dataclass
class LoraSettings:
    """LoRA through PEFT (off: full fine-tuning).

    Attributes:
        enabled: train LoRA adapters instead of every LM weight.
        r, alpha, dropout: LoRA rank, scaling numerator and dropout.
        target_modules: module names (last name component, e.g. ``["q_proj", "v_proj"]``) inside
            the LM; ``None`` = every linear layer of its decoder blocks (attention and MLP
            projections, see :func:`lora_target_modules`).
        train_fmri_token_embeddings: also train the input-embedding rows of ``<fmri_start>`` and
            ``<fmri_end>`` (new tokens) with PEFT ``trainable_token_indices``.
    """

    enabled: bool = False
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: list[str] | None = None
    train_fmri_token_embeddings: bool = True

    def __post_init__(self) -> None:
        if self.r < 1 or not (self.alpha > 0) or not (0 <= self.dropout < 1):
            raise ValueError(
                f"lora needs r >= 1, alpha > 0 and 0 <= dropout < 1; got {self.r}, {self.alpha}, {self.dropout}."
            )


def _loading_problems(info: Mapping[str, Any]) -> dict[str, list[str]]:
    return {k: sorted(map(str, v)) for k, v in info.items() if k in _LOADING_PROBLEMS and v}


def load_causal_lm(name_or_path: str, *, dtype: str = "float32", attn_implementation: str | None = None):
    """``AutoModelForCausalLM.from_pretrained`` that refuses missing, unexpected or mis-shaped weights (SPEC B12)."""
    from transformers import AutoModelForCausalLM

    options: dict[str, Any] = {"dtype": getattr(torch, dtype), "output_loading_info": True}
    if attn_implementation is not None:
        options["attn_implementation"] = attn_implementation
    try:
        model, info = AutoModelForCausalLM.from_pretrained(name_or_path, **options)
    except OSError as error:
        raise FileNotFoundError(
            f"Could not load the causal LM {name_or_path!r} ({error}); give a local folder or a Hub name that is cached "
            "(set HF_HUB_OFFLINE=0 to download)."
        ) from error
    problems = _loading_problems(info)
    if problems:
        listing = "; ".join(
            f"{k}: {', '.join(map(str, v[:5]))}{' ...' if len(v) > 5 else ''}" for k, v in problems.items()
        )
        raise ValueError(
            f"The checkpoint {name_or_path!r} does not match its architecture ({listing}); refusing to train on "
            "partially random weights. Check the folder or its config.json."
        )
    return model


def load_fmri_lm(folder: str | Path, *, dtype: str = "float32", attn_implementation: str | None = None):
    """A saved :class:`FmriLMForCausalLM` (e.g. stage 2's ``OUTPUT/model``), loaded strictly.

    Raises:
        FileNotFoundError: ``folder`` is not a folder with a ``config.json``.
        ValueError: the weights do not match the architecture (missing, unexpected or mis-shaped).
    """
    from ..modeling_fmrilm import FmriLMForCausalLM

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"{folder} holds no saved model (config.json); pass the OUTPUT/model folder of `fmrilm train align`."
        )
    options: dict[str, Any] = {"dtype": getattr(torch, dtype), "output_loading_info": True}
    if attn_implementation is not None:
        options["attn_implementation"] = attn_implementation
    model, info = FmriLMForCausalLM.from_pretrained(folder, **options)
    problems = _loading_problems(info)
    if problems:
        raise ValueError(
            f"The model in {folder} does not load cleanly ({problems}); refusing to train on partially random weights."
        )
    return model


def lora_target_modules(model) -> list[str]:
    """Last name components of every linear layer (``nn.Linear`` or GPT-2's ``Conv1D``) in the LM's decoder
    blocks: the attention and MLP projections (embeddings, LM head and the fMRI modules excluded)."""
    from transformers.pytorch_utils import Conv1D

    language_model = fmri_model(model).language_model
    output = language_model.get_output_embeddings()
    names = set()
    for name, module in language_model.named_modules():
        if isinstance(module, (torch.nn.Linear, Conv1D)) and module is not output:
            names.add(name.rsplit(".", 1)[-1])
    if not names:
        raise ValueError("The language model has no linear layers for LoRA; set lora.target_modules explicitly.")
    return sorted(names)


def apply_lora(model, settings: LoraSettings, *, modules_to_save: Sequence[str] | None = FMRI_MODULES):
    """``get_peft_model`` with adapters on the LM's projections.

    Args:
        model: an :class:`FmriLMForCausalLM`.
        settings: rank, scaling, dropout, target modules, and whether the ``<fmri_start>`` /
            ``<fmri_end>`` embedding rows are trained (``trainable_token_indices``).
        modules_to_save: modules trained in full next to the adapters (PEFT ``modules_to_save``);
            stage 2 trains the new fMRI modules (:data:`FMRI_MODULES`), ``None`` / empty = none.

    Returns:
        The ``PeftModel``; only the adapters (and ``modules_to_save``, token rows) are trainable.
    """
    from peft import LoraConfig, get_peft_model
    from transformers.pytorch_utils import Conv1D

    targets = settings.target_modules or lora_target_modules(model)
    # A regex (full match on module names) keeps the adapters inside the language model.
    pattern = rf".*language_model\..*\.({'|'.join(re.escape(t) for t in targets)})"
    matched = [n for n, _ in model.named_modules() if re.fullmatch(pattern, n)]
    if not matched:
        raise ValueError(
            f"lora.target_modules {targets} match no module of the language model; choose from {lora_target_modules(model)}."
        )
    modules = dict(model.named_modules())
    config = model.config
    token_ids = [config.fmri_start_token_id, config.fmri_end_token_id] if settings.train_fmri_token_embeddings else None
    lora_config = LoraConfig(
        r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout, target_modules=pattern,
        modules_to_save=list(modules_to_save) if modules_to_save else None, trainable_token_indices=token_ids,
        bias="none", fan_in_fan_out=any(isinstance(modules[name], Conv1D) for name in matched),  # GPT-2: transposed
    )  # fmt: skip
    return get_peft_model(model, lora_config)


def render_prompt(
    processor,
    text: str,
    *,
    chat_template: Literal["auto", "always", "never"] = "auto",
    chat_template_kwargs: Mapping[str, Any] | None = None,
    system: str | None = None,
) -> tuple[str, bool]:
    """(prompt string with the ``<fmri>`` markers of ``text``, whether a chat template rendered it).

    ``"auto"`` renders ``text`` as the user turn (plus an optional system message, and the assistant
    header) when the processor has a chat template, ``"always"`` requires one, ``"never"`` returns
    ``text`` unchanged. A rendered prompt already holds the template's special tokens, so tokenize
    it with ``add_special_tokens=False``.
    """
    if chat_template not in ("auto", "always", "never"):
        raise ValueError(f"chat_template must be 'auto', 'always' or 'never', got {chat_template!r}.")
    has_template = processor.chat_template is not None
    if chat_template == "always" and not has_template:
        raise ValueError(
            "prompt.chat_template is 'always' but the LM tokenizer has no chat template; use 'auto' or 'never'."
        )
    if chat_template == "never" or not has_template:
        return text, False
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    rendered = processor.apply_chat_template(messages, add_generation_prompt=True, **dict(chat_template_kwargs or {}))
    return rendered, True


def fmri_model(model):
    """The FmriLMForCausalLM inside a PEFT wrapper (or the model itself)."""
    from ..modeling_fmrilm import FmriLMForCausalLM

    if isinstance(model, FmriLMForCausalLM):
        return model
    get_base = getattr(model, "get_base_model", None)
    if get_base is not None:
        return get_base()
    raise TypeError(f"Expected an FmriLMForCausalLM (or a PEFT model around one), got {type(model).__name__}.")


def parameter_counts(model) -> dict[str, int]:
    """``{"parameters": all, "trainable_parameters": those with requires_grad}``."""
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


@torch.no_grad()
def describe_scans(
    model,
    processor,
    codes: Sequence[np.ndarray] | np.ndarray,
    *,
    prompt: str,
    add_special_tokens: bool = True,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    device: torch.device | str | None = None,
) -> list[str]:
    """Greedy descriptions of pre-tokenized scans: one text per row of ``codes`` (N,) each.

    Prompts are left-padded so that every row's generation starts right after its prompt; the new
    tokens are decoded without special tokens.
    """
    was_training = model.training
    model.eval()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    tokenizer = processor.tokenizer
    texts: list[str] = []
    for start in range(0, len(codes), batch_size):
        chunk = np.stack([np.asarray(c) for c in codes[start : start + batch_size]]).astype(np.int64)
        inputs = processor(
            text=[prompt] * len(chunk), fmri_codes=chunk, return_tensors="pt", padding=True, padding_side="left",
            add_special_tokens=add_special_tokens,
        )  # fmt: skip
        inputs = {name: tensor.to(device) for name, tensor in inputs.items()}
        generated = model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        )  # fmt: skip
        new_tokens = generated[:, inputs["input_ids"].shape[1] :]
        texts.extend(text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    model.train(was_training)
    return texts


def export_best(model, best_dir: Path, model_dir: Path, adapter_dir: Path | None):
    """Write the best weights of a run as a plain FmriLMForCausalLM (merged under LoRA); returns the exported model.

    Full fine-tuning: ``best_dir`` holds the whole model (``save_pretrained``), copied to ``model_dir``.
    LoRA (``adapter_dir`` given): ``model`` is the trained ``PeftModel`` whose base weights are frozen,
    so the best model is this base plus the adapter saved at the best step: the adapter is loaded
    into ``model``, saved to ``adapter_dir``, merged and the merged model saved to ``model_dir``
    (``model`` is merged in place: do not train it afterwards).
    """
    from ..modeling_fmrilm import FmriLMForCausalLM

    if adapter_dir is None:
        best, info = FmriLMForCausalLM.from_pretrained(best_dir, output_loading_info=True)
        problems = _loading_problems(info)
        if problems:
            raise ValueError(f"The best checkpoint {best_dir} does not load cleanly: {problems}.")
        best.save_pretrained(model_dir)
        return best
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    adapter_file = best_dir / "adapter_model.safetensors"
    result = set_peft_model_state_dict(model, load_file(adapter_file))
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ValueError(f"The best adapter {adapter_file} has weights this model lacks: {unexpected[:5]}.")
    model.save_pretrained(adapter_dir)
    merged = model.merge_and_unload()
    merged.save_pretrained(model_dir)
    return merged
