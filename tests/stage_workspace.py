"""Builders of tiny on-disk workspaces for the stage-2 and stage-3 trainer tests.

    from stage_workspace import build_tokenized_cohort, save_tiny_lms, stage1_processor

Everything is made with the library itself and nothing touches the Hub: a simulated cohort (subject-
grouped splits, labels ``coupling_class``, ``gain_class``, ``noise_level``), described with the graph
family (``descriptor_facts``) and pre-tokenized (int16 ``fmri_codes``) by a tiny random stage-1
processor; tiny random causal LMs with the offline test tokenizer saved to folders.
"""

from __future__ import annotations

from pathlib import Path

import torch
from lm_fixtures import tiny_causal_lm, tiny_tokenizer

from fmrilm import FmriFeatureExtractor, FmriTokenizerConfig
from fmrilm.datasets_scripts import build_simulated, write_dataset
from fmrilm.descriptors import DescriptorExtractor
from fmrilm.descriptors.corpus import describe_dataset, reference_scans, write_described_dataset
from fmrilm.modeling_fmri_tokenizer import FmriTokenizerModel
from fmrilm.pretokenize import pretokenize_dataset, write_pretokenized_dataset
from fmrilm.processing_fmrilm import FmriLMProcessor

#: 2 time patches x 94 ROIs = 188 fMRI tokens per scan.
SHAPE = dict(n_rois=94, max_timepoints=16, patch_size=8)
N_TOKENS = 188


def stage1_processor(seed: int) -> FmriLMProcessor:
    """A processor with a tiny random stage-1 fMRI tokenizer (no text tokenizer)."""
    torch.manual_seed(seed)
    model = FmriTokenizerModel(FmriTokenizerConfig.preset("tiny", **SHAPE)).eval()
    return FmriLMProcessor(feature_extractor=FmriFeatureExtractor(**SHAPE, atlas="AAL2"), fmri_tokenizer=model)


def build_tokenized_cohort(root: Path, *, n_subjects: int = 8, duration_s: float = 200, seed: int = 1) -> Path:
    """``root/raw`` (the simulated cohort), ``root/described`` (graph descriptors), ``root/processor``
    (stage 1) and ``root/tokenized`` (codes of that processor, every column kept); returns ``root``."""
    result = build_simulated(n_subjects=n_subjects, duration_s=duration_s, seed=seed, progress=False,
                             cache_dir=root / ".cache")  # fmt: skip
    write_dataset(result, root / "raw")
    extractor = DescriptorExtractor("aal2", n_ica_components=4)
    scans, trs, _ = reference_scans(result.dataset)
    extractor.fit(scans, trs)
    described = describe_dataset(result.dataset, extractor, families=("graph",))
    write_described_dataset(described, root / "raw", root / "described", extractor)
    processor = stage1_processor(seed=0)
    processor.save_pretrained(root / "processor")
    tokenized, info = pretokenize_dataset(described, processor)
    write_pretokenized_dataset(tokenized, root / "described", root / "tokenized", info)
    return root


def save_tiny_lms(root: Path, kinds: tuple[str, ...] = ("llama", "gpt2")) -> None:
    """Tiny random LMs of ``kinds`` with the test tokenizer, each in ``root/<kind>``."""
    tokenizer = tiny_tokenizer()
    for kind in kinds:
        tiny_causal_lm(kind, len(tokenizer)).save_pretrained(root / kind)
        tokenizer.save_pretrained(root / kind)
