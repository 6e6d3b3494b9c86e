"""The descriptor corpus: each scan's imaging features as a structured record and as text.

    dx = DescriptorExtractor(atlas=atlas_spec)   # AtlasSpec gives each ROI's network
    dx.fit(scans, trs)                           # reference cohort: z-score stats, group gradients, group ICA
    facts = dx.compute(scan, tr=...)             # DescriptorFacts: value, cohort z and bin of every feature
    text = dx.describe(facts, seed=0)            # the descriptor paragraphs
"""

from .extractor import DescriptorExtractor, DescriptorSettings
from .facts import FAMILIES, DescriptorFacts, FeatureFact, bin_for
from .text import Mention, describe, describe_with_mentions, verify_text

__all__ = [
    "FAMILIES",
    "DescriptorExtractor",
    "DescriptorFacts",
    "DescriptorSettings",
    "FeatureFact",
    "Mention",
    "bin_for",
    "describe",
    "describe_with_mentions",
    "verify_text",
]
