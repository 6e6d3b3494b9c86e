"""The package surface: registration on import, lazy attributes, the console script."""

import subprocess
import sys

import pytest
from transformers import AutoFeatureExtractor

import fmrilm


def test_public_names_resolve():
    for name in fmrilm.__all__:
        assert getattr(fmrilm, name) is not None
    with pytest.raises(AttributeError, match="no attribute"):
        fmrilm.does_not_exist  # noqa: B018


def test_every_lazy_attribute_is_public():
    assert set(fmrilm._LAZY_ATTRIBUTES) <= set(fmrilm.__all__)


def test_feature_extractor_is_registered(tmp_path):
    fmrilm.FmriFeatureExtractor(n_rois=4, max_timepoints=32, patch_size=16).save_pretrained(tmp_path)
    assert type(AutoFeatureExtractor.from_pretrained(tmp_path)) is fmrilm.FmriFeatureExtractor


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "fmrilm.cli", "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("data", "dataset", "demo"):
        assert command in out
