"""FmriTokenizerConfig: presets, validation, save/load."""

import pytest
from transformers import AutoConfig

import fmrilm  # noqa: F401  (registers the config)
from fmrilm import FmriTokenizerConfig


def test_presets_and_token_count():
    small = FmriTokenizerConfig.preset("small", n_rois=94, patch_size=16)
    assert (small.hidden_size, small.num_hidden_layers, small.num_attention_heads) == (384, 12, 6)
    assert small.num_time_patches == 10 and small.num_tokens == 940
    base = FmriTokenizerConfig.preset("base")
    large = FmriTokenizerConfig.preset("large")
    assert (base.hidden_size, base.num_attention_heads) == (768, 12)
    assert (large.hidden_size, large.num_hidden_layers, large.num_attention_heads) == (1024, 24, 16)
    assert FmriTokenizerConfig.preset("tiny").decoder_hidden_size == 32
    with pytest.raises(ValueError, match="choose from"):
        FmriTokenizerConfig.preset("huge")


def test_decoder_defaults_to_encoder_shape():
    config = FmriTokenizerConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=3)
    assert (config.decoder_hidden_size, config.decoder_num_attention_heads, config.decoder_num_hidden_layers) == (64, 4, 3)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"patch_size": 7}, "does not divide"),
        ({"hidden_size": 100}, "not a multiple"),
        ({"n_rois": 0}, "must be positive"),
        ({"ema_decay": 1.0}, "ema_decay"),
    ],
)
def test_invalid_configs_are_refused(overrides, message):
    with pytest.raises(Exception, match=message):
        FmriTokenizerConfig(**overrides)


def test_round_trip_through_auto_config(tmp_path):
    config = FmriTokenizerConfig.preset("tiny", n_rois=94, quantizer="fsq", fsq_levels=[7, 5, 5])
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, FmriTokenizerConfig)
    assert loaded.to_diff_dict() == config.to_diff_dict()
