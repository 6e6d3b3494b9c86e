"""The "fmri-to-text" and "zero-shot-fmri-classification" pipelines (fmrilm.pipeline_fmrilm).

A tiny random stage-1 processor (4 ROIs; 94 ROIs "AAL2" for the built-in atlas) and a tiny random
Llama are saved to folders; the pipelines are loaded from them with ``pipeline(task, model=folder)``
(after ``import fmrilm``) and, from a folder written by ``save_for_pipelines``, with
``trust_remote_code=True`` in a process where ``fmrilm`` cannot be imported. Results are compared
with direct ``generate`` calls and a brute-force forward pass per candidate.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings

import nibabel as nib
import numpy as np
import pytest
import torch
from lm_fixtures import tiny_causal_lm, tiny_tokenizer
from transformers import pipeline
from transformers.pipelines import PIPELINE_REGISTRY

import fmrilm  # noqa: F401  (registers the Auto classes and the pipeline tasks)
from fmrilm import FmriFeatureExtractor, FmriLMForCausalLM, FmriTokenizerConfig
from fmrilm.atlases import aal2
from fmrilm.modeling_fmri_tokenizer import FmriTokenizerModel
from fmrilm.nifti import parcellate
from fmrilm.pipeline_fmrilm import (
    FMRI_TO_TEXT,
    ZERO_SHOT_FMRI_CLASSIFICATION,
    FmriToTextPipeline,
    ZeroShotFmriClassificationPipeline,
    custom_pipelines_config,
    register_pipelines,
    save_for_pipelines,
)
from fmrilm.processing_fmrilm import FmriLMProcessor

SMALL = dict(n_rois=4, max_timepoints=16, patch_size=8)  # 2 time patches x 4 ROIs = 8 fMRI tokens
AAL2_SHAPE = dict(n_rois=94, max_timepoints=16, patch_size=8)
TR = 2.0
NEW_TOKENS = 6
DESCRIBE = "<fmri> Describe the brain activity in this scan."
# lm_fixtures.CHAT_TEMPLATE renders one user turn and the generation prompt like this:
CHAT_DESCRIBE = "<|user|> <fmri> Describe the brain activity in this scan.\n<|assistant|> "
LABELS = ["Default", "Limbic", "Occipital"]  # several tokens each in the tiny BPE


def build_processor(shape: dict, atlas: str | None, seed: int = 0) -> FmriLMProcessor:
    torch.manual_seed(seed)
    fmri_tokenizer = FmriTokenizerModel(FmriTokenizerConfig.preset("tiny", **shape)).eval()
    return FmriLMProcessor(
        feature_extractor=FmriFeatureExtractor(**shape, atlas=atlas), tokenizer=tiny_tokenizer(),
        fmri_tokenizer=fmri_tokenizer,
    )  # fmt: skip


def build_model(processor: FmriLMProcessor, seed: int = 0) -> FmriLMForCausalLM:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        language_model = tiny_causal_lm("llama", len(processor.tokenizer), seed=seed)
        model = FmriLMForCausalLM.from_text_model(language_model, processor).eval()
    with torch.no_grad():  # larger fMRI embeddings, so that the codes visibly steer the tiny random model
        model.fmri_embed.weight.mul_(100.0)
        model.roi_embed.weight.mul_(100.0)
    model.generation_config.eos_token_id = None  # random weights: always generate NEW_TOKENS tokens
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Folders: "plain" (model.save_pretrained + processor.save_pretrained), "remote" (save_for_pipelines)."""
    root = tmp_path_factory.mktemp("pipelines")
    processor = build_processor(SMALL, atlas=None)
    model = build_model(processor, seed=3)  # a seed whose random model writes different text for different scans
    model.save_pretrained(root / "plain")
    processor.save_pretrained(root / "plain")
    save_for_pipelines(model, processor, root / "remote")
    assert not hasattr(model.config, "custom_pipelines")  # only the saved folder names the pipelines
    return {"plain": root / "plain", "remote": root / "remote", "root": root}


@pytest.fixture(scope="module")
def describe(saved):
    return pipeline(FMRI_TO_TEXT, model=str(saved["plain"]), max_new_tokens=NEW_TOKENS)


@pytest.fixture(scope="module")
def classify(saved):
    return pipeline(ZERO_SHOT_FMRI_CLASSIFICATION, model=str(saved["plain"]))


def scans(n: int, seed: int = 0, n_rois: int = 4) -> list[np.ndarray]:
    """``n`` (time, rois) float32 scans of different lengths (20, 27, 34 ... TRs)."""
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(20 + 7 * index, n_rois)).astype(np.float32) for index in range(n)]


def reference_description(pipe, scan: np.ndarray, tr: float, prompt: str = CHAT_DESCRIBE, special: bool = False) -> str:
    """Tokenize, generate greedily and decode by hand."""
    processor, model = pipe.processor, pipe.model
    codes = processor.tokenize_fmri([scan], tr=tr)
    inputs = processor(text=prompt, fmri_codes=codes, add_special_tokens=special, return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(
            **inputs, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=processor.tokenizer.pad_token_id
        )
    new_tokens = generated[0, inputs["input_ids"].shape[1] :]
    assert len(new_tokens) == NEW_TOKENS
    return processor.decode(new_tokens, skip_special_tokens=True).strip()


def brute_force_log_likelihoods(pipe, prompt: str, codes: torch.Tensor, labels: list[str], mean=False) -> np.ndarray:
    """One full forward pass over prompt + " " + label + EOS per label; the sum (or mean) of the label's log-probs."""
    processor, model = pipe.processor, pipe.model
    totals = []
    for label in labels:
        inputs = processor(text=prompt, fmri_codes=codes, text_target=" " + label, add_special_tokens=False)
        with torch.no_grad():
            logits = model(input_ids=inputs["input_ids"], fmri_codes=inputs["fmri_codes"]).logits[0].double()
        targets = inputs["labels"][0, 1:]
        counted = targets != -100
        log_probs = torch.log_softmax(logits[:-1], dim=-1)[counted].gather(1, targets[counted][:, None])[:, 0]
        totals.append(float(log_probs.mean() if mean else log_probs.sum()))
    return np.array(totals)


# --------------------------------------------------------------------------------------------------
# Registration and loading
# --------------------------------------------------------------------------------------------------


def test_both_tasks_are_registered_on_import_and_registering_again_changes_nothing():
    for task, pipeline_class in ((FMRI_TO_TEXT, FmriToTextPipeline),
                                 (ZERO_SHOT_FMRI_CLASSIFICATION, ZeroShotFmriClassificationPipeline)):  # fmt: skip
        entry = PIPELINE_REGISTRY.supported_tasks[task]
        assert entry["impl"] is pipeline_class
        assert [cls.__name__ for cls in entry["pt"]] == ["AutoModelForCausalLM"]
        assert entry["type"] == "multimodal"
    before = dict(PIPELINE_REGISTRY.supported_tasks)
    register_pipelines()
    register_pipelines()
    assert all(
        PIPELINE_REGISTRY.supported_tasks[task] is before[task]
        for task in (FMRI_TO_TEXT, ZERO_SHOT_FMRI_CLASSIFICATION)
    )


def test_a_saved_folder_loads_as_both_pipelines_with_our_processor(describe, classify):
    for pipe in (describe, classify):
        assert isinstance(pipe.processor, FmriLMProcessor)  # not the bare text tokenizer
        assert pipe.tokenizer is pipe.processor.tokenizer
        assert pipe.feature_extractor is pipe.processor.feature_extractor
        assert isinstance(pipe.model, FmriLMForCausalLM)
    assert isinstance(describe, FmriToTextPipeline)
    assert isinstance(classify, ZeroShotFmriClassificationPipeline)


def test_save_for_pipelines_writes_custom_pipelines_and_the_remote_code(saved):
    folder = saved["remote"]
    config = json.loads((folder / "config.json").read_text())
    assert config["custom_pipelines"] == custom_pipelines_config()
    assert config["custom_pipelines"][FMRI_TO_TEXT]["impl"] == "pipeline_fmrilm.FmriToTextPipeline"
    processor_config = json.loads((folder / "processor_config.json").read_text())
    assert processor_config["auto_map"]["AutoProcessor"] == "processing_fmrilm.FmriLMProcessor"
    for name in ("pipeline_fmrilm.py", "scoring_fmrilm.py", "modeling_fmrilm.py", "configuration_fmrilm.py",
                 "processing_fmrilm.py", "masking_fmrilm.py", "feature_extraction_fmrilm.py"):  # fmt: skip
        assert (folder / name).is_file(), name
    assert (folder / "fmri_tokenizer" / "config.json").is_file()


def test_pipeline_save_pretrained_writes_a_folder_that_loads_again(describe, tmp_path):
    describe.save_pretrained(tmp_path / "again")
    again = pipeline(FMRI_TO_TEXT, model=str(tmp_path / "again"), trust_remote_code=True, max_new_tokens=NEW_TOKENS)
    scan = scans(1)[0]
    assert again(scan, tr=TR) == describe(scan, tr=TR)


# --------------------------------------------------------------------------------------------------
# fmri-to-text
# --------------------------------------------------------------------------------------------------


def test_description_equals_tokenize_generate_decode_by_hand(describe):
    scan = scans(1)[0]
    output = describe(scan, tr=TR)
    assert output == [{"generated_text": reference_description(describe, scan, TR)}]
    assert output[0]["generated_text"]  # the random model writes something


def test_without_chat_template_the_prompt_is_used_as_is_with_special_tokens(describe):
    scan = scans(1)[0]
    prompt = "Scan: <fmri> What do you see?"
    output = describe(scan, tr=TR, prompt=prompt, chat_template="never")
    assert output == [{"generated_text": reference_description(describe, scan, TR, prompt=prompt, special=True)}]


def test_every_input_kind_gives_the_same_codes(describe, tmp_path):
    scan = scans(1)[0]
    expected = describe.processor.tokenize_fmri([scan], tr=TR)
    np.save(tmp_path / "scan.npy", scan)
    int16_row = expected[0].numpy().astype(np.int16)
    kinds = {
        "array": (scan, {"tr": TR}),
        "tensor": (torch.from_numpy(scan), {"tr": TR}),
        "dict": ({"fmri": scan, "tr": TR}, {}),
        "dict wins over call tr": ({"fmri": scan, "tr": TR}, {"tr": 0.5}),
        "npy path": (str(tmp_path / "scan.npy"), {"tr": TR}),
        "npy in dict": ({"fmri": tmp_path / "scan.npy", "tr": TR}, {}),
        "codes (N,) int16": ({"fmri_codes": int16_row}, {}),
        "codes (1, N) tensor": ({"fmri_codes": expected}, {}),
    }
    for name, (item, options) in kinds.items():
        codes = describe.preprocess(item, **options)["fmri_codes"]
        assert torch.equal(codes, expected), name


def test_a_mixed_list_is_batched_and_equals_one_at_a_time(describe):
    batch_scans = scans(5, seed=1)
    codes = describe.processor.tokenize_fmri([batch_scans[3]], tr=TR)
    inputs = [batch_scans[0], {"fmri": batch_scans[1], "tr": TR}, batch_scans[2], {"fmri_codes": codes}, batch_scans[4]]
    one_at_a_time = [describe(item, tr=TR) for item in inputs]
    for batch_size in (2, 5):
        assert describe(inputs, tr=TR, batch_size=batch_size) == one_at_a_time
    streamed = describe((item for item in inputs), tr=TR, batch_size=2)  # a generator streams its outputs
    assert list(streamed) == one_at_a_time
    assert len({output[0]["generated_text"] for output in one_at_a_time}) > 1  # different scans, different text


def test_generation_settings_apply(describe):
    scan = scans(1)[0]
    short = describe(scan, tr=TR, max_new_tokens=2)[0]["generated_text"]
    long = describe(scan, tr=TR, generate_kwargs={"max_new_tokens": NEW_TOKENS})[0]["generated_text"]
    assert long.startswith(short) and len(short) < len(long)
    configured = FmriToTextPipeline(
        model=describe.model, processor=describe.processor, generate_kwargs={"max_new_tokens": 2}
    )
    assert configured(scan, tr=TR)[0]["generated_text"] == short  # settings given at construction persist
    beams = describe(scan, tr=TR, num_beams=2, num_return_sequences=2, do_sample=False)
    assert len(beams) == 2 and beams[0] == describe(scan, tr=TR, num_beams=2)[0]


# --------------------------------------------------------------------------------------------------
# zero-shot-fmri-classification
# --------------------------------------------------------------------------------------------------


def test_zero_shot_scores_are_the_softmax_of_brute_force_log_likelihoods(classify):
    scan = scans(1, seed=2)[0]
    output = classify(scan, tr=TR, candidate_labels=LABELS, question="What is the coupling?")
    assert sorted(entry["label"] for entry in output) == sorted(LABELS)
    scores = [entry["score"] for entry in output]
    assert scores == sorted(scores, reverse=True)
    assert sum(scores) == pytest.approx(1.0, abs=1e-9)
    prompt = "<|user|> <fmri>\n### Question: What is the coupling?\n### Answer:\n<|assistant|> "
    codes = classify.processor.tokenize_fmri([scan], tr=TR)
    for mean in (False, True):
        log_likelihoods = brute_force_log_likelihoods(classify, prompt, codes, LABELS, mean=mean)
        expected = np.exp(log_likelihoods - log_likelihoods.max())
        expected /= expected.sum()
        got = classify(scan, tr=TR, candidate_labels=LABELS, question="What is the coupling?",
                       normalize="mean" if mean else "sum")  # fmt: skip
        got = {entry["label"]: entry["score"] for entry in got}
        np.testing.assert_allclose([got[label] for label in LABELS], expected, atol=1e-5)


def test_zero_shot_default_question_and_custom_template(classify):
    scan = scans(1, seed=3)[0]
    codes = classify.processor.tokenize_fmri([scan], tr=TR)
    labels = ["low", "high"]
    cases = {
        (): "<fmri>\n### Question: Which of these describes this scan: low or high?\n### Answer:",
        (("hypothesis_template", "Scan <fmri>. Coupling:"),): "Scan <fmri>. Coupling:",
        (("hypothesis_template", "<fmri> Q: {question} A:"), ("question", "Coupling?")): "<fmri> Q: Coupling? A:",
    }
    for options, prompt in cases.items():
        got = classify(scan, tr=TR, candidate_labels=labels, chat_template="never", **dict(options))
        log_likelihoods = brute_force_log_likelihoods(classify, prompt, codes, labels)
        # chat_template="never": the tokenizer's own special tokens are added (none for this tokenizer)
        probabilities = np.exp(log_likelihoods) / np.exp(log_likelihoods).sum()
        got = {entry["label"]: entry["score"] for entry in got}
        np.testing.assert_allclose([got[label] for label in labels], probabilities, atol=1e-5)


def test_zero_shot_batches_equal_one_at_a_time(classify):
    batch_scans = scans(4, seed=4)
    one_at_a_time = [classify(scan, tr=TR, candidate_labels=LABELS) for scan in batch_scans]
    batched = classify(batch_scans, tr=TR, candidate_labels=LABELS, batch_size=3)
    assert len(batched) == 4
    for single, together in zip(one_at_a_time, batched):
        assert [entry["label"] for entry in single] == [entry["label"] for entry in together]
        np.testing.assert_allclose([e["score"] for e in single], [e["score"] for e in together], atol=1e-6)


# --------------------------------------------------------------------------------------------------
# NIfTI input
# --------------------------------------------------------------------------------------------------


def write_tiny_nifti(folder, rng, n_volumes=30, tr=TR):
    """A 4-D image (8 x 8 x 6 voxels of 3 mm) and a label image on the same grid: 4 boxes, labels 5, 9, 11, 40."""
    labels = np.zeros((8, 8, 6), dtype=np.int16)
    labels[:4, :4] = 5
    labels[4:, :4] = 9
    labels[:4, 4:] = 11
    labels[4:, 4:, :3] = 40
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    data = rng.normal(size=(8, 8, 6, n_volumes)).astype(np.float32) + 10.0
    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm", "sec")
    image.header["pixdim"][4] = tr
    nib.save(image, folder / "bold.nii.gz")
    nib.save(nib.Nifti1Image(labels, affine), folder / "labels.nii.gz")
    means = np.stack([data[labels == value].mean(axis=0) for value in (5, 9, 11, 40)], axis=1)  # (time, 4)
    return folder / "bold.nii.gz", folder / "labels.nii.gz", means


def test_nifti_is_parcellated_with_the_given_atlas_image_and_the_header_tr(describe, tmp_path, rng):
    bold, labels, means = write_tiny_nifti(tmp_path, rng)
    processor = describe.processor
    codes = describe.preprocess(str(bold), atlas_image=labels)["fmri_codes"]
    assert torch.equal(codes, processor.tokenize_fmri([means], tr=TR))
    override = describe.preprocess({"fmri": bold, "tr": 1.5}, atlas_image=labels)["fmri_codes"]
    assert torch.equal(override, processor.tokenize_fmri([means], tr=1.5))
    assert describe(str(bold), atlas_image=str(labels)) == describe(means, tr=TR)


def test_nifti_uses_the_built_in_aal2_image_when_the_processor_records_aal2(tmp_path, aal2_atlas_files, rng):
    atlas_path, _ = aal2_atlas_files
    atlas = nib.load(atlas_path)
    step = 3  # a coarse (6 mm) image on the atlas's field of view
    shape = tuple(int(size) // step for size in atlas.shape[:3])
    affine = atlas.affine.copy()
    affine[:3, :3] *= step
    image = nib.Nifti1Image(rng.normal(size=(*shape, 24)).astype(np.float32) + 100.0, affine)
    image.header.set_xyzt_units("mm", "sec")
    image.header["pixdim"][4] = 0.72
    nib.save(image, tmp_path / "mni_bold.nii.gz")
    processor = build_processor(AAL2_SHAPE, atlas="AAL2", seed=1)
    pipe = FmriToTextPipeline(model=build_model(processor, seed=1), processor=processor, max_new_tokens=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small AAL2 regions missing at 6 mm are zero columns
        codes = pipe.preprocess(str(tmp_path / "mni_bold.nii.gz"))["fmri_codes"]
        reference = parcellate(tmp_path / "mni_bold.nii.gz", atlas_path, aal2())
        assert (
            pipe(str(tmp_path / "mni_bold.nii.gz"))[0]["generated_text"]
            == pipe(reference.time_series, tr=0.72)[0]["generated_text"]
        )
    assert reference.time_series.shape[1] == 94
    assert torch.equal(codes, processor.tokenize_fmri([reference.time_series], tr=0.72))


# --------------------------------------------------------------------------------------------------
# Remote code
# --------------------------------------------------------------------------------------------------

_REMOTE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np

    folder, scan_path, nifti_path, new_tokens = sys.argv[1:5]

    class BlockFmrilm:
        '''Make `import fmrilm` fail: the folder alone must provide the pipelines.'''
        def find_spec(self, name, path=None, target=None):
            if name == "fmrilm" or name.startswith("fmrilm."):
                raise ImportError(f"{name} is blocked in this test")

    sys.meta_path.insert(0, BlockFmrilm())
    from transformers import pipeline

    scan = np.load(scan_path)
    describe = pipeline("fmri-to-text", model=folder, trust_remote_code=True, max_new_tokens=int(new_tokens))
    classify = pipeline("zero-shot-fmri-classification", model=folder, trust_remote_code=True)
    results = {
        "describe_class": type(describe).__module__ + "." + type(describe).__name__,
        "processor_class": type(describe.processor).__module__ + "." + type(describe.processor).__name__,
        "describe": describe([scan, {"fmri": scan, "tr": 2.0}], tr=2.0, batch_size=2),
        "classify": classify(scan, tr=2.0, candidate_labels=["Default", "Limbic", "Occipital"]),
    }
    try:
        describe(nifti_path, atlas_image=nifti_path)
    except ImportError as error:
        results["nifti_error"] = str(error)
    assert "fmrilm" not in sys.modules
    print(json.dumps(results))
    """
)


def test_both_pipelines_run_as_remote_code_where_fmrilm_cannot_be_imported(saved, describe, classify, tmp_path, rng):
    scan = scans(1, seed=5)[0]
    np.save(tmp_path / "scan.npy", scan)
    bold, _, _ = write_tiny_nifti(tmp_path, rng)
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(
        [sys.executable, "-c", _REMOTE_SCRIPT, str(saved["remote"]), str(tmp_path / "scan.npy"), str(bold), str(NEW_TOKENS)],
        capture_output=True, text=True, env=environment, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    remote = json.loads(result.stdout.strip().splitlines()[-1])
    assert remote["describe_class"].startswith("transformers_modules.")
    assert remote["describe_class"].endswith("pipeline_fmrilm.FmriToTextPipeline")
    assert remote["processor_class"].endswith("processing_fmrilm.FmriLMProcessor")
    assert remote["processor_class"].startswith("transformers_modules.")
    assert remote["describe"] == [describe(scan, tr=TR)] * 2
    local = classify(scan, tr=TR, candidate_labels=LABELS)
    assert [entry["label"] for entry in remote["classify"]] == [entry["label"] for entry in local]
    np.testing.assert_allclose([e["score"] for e in remote["classify"]], [e["score"] for e in local], atol=1e-6)
    assert "pip install fmri-lm" in remote["nifti_error"]


def test_the_remote_code_folder_also_loads_in_this_process(saved, describe):
    remote = pipeline(FMRI_TO_TEXT, model=str(saved["remote"]), trust_remote_code=True, max_new_tokens=NEW_TOKENS)
    scan = scans(1, seed=6)[0]
    assert remote(scan, tr=TR) == describe(scan, tr=TR)


# --------------------------------------------------------------------------------------------------
# Refusals
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "options", "error", "message"),
    [
        (np.zeros((4, 30), np.float32), {"tr": TR}, ValueError, "Transpose"),
        (np.zeros((30, 5), np.float32), {"tr": TR}, ValueError, "ROIs"),
        (np.zeros((30, 4), np.float32), {}, ValueError, "pass tr="),
        (np.zeros((3, 30, 4), np.float32), {"tr": TR}, ValueError, "list"),
        ([[0.0] * 4] * 30, {"tr": TR}, ValueError, "np.asarray"),
        ({"fmri": np.zeros((30, 4)), "bold": 1}, {}, ValueError, "Unknown input key"),
        ({"tr": TR}, {}, ValueError, "needs 'fmri'"),
        ({"fmri_codes": np.zeros(8, np.int64), "tr": TR}, {}, ValueError, "either the codes alone"),
        ({"fmri_codes": np.zeros((2, 8), np.int64)}, {}, ValueError, "list of inputs"),
        ({"fmri_codes": np.zeros(7, np.int64)}, {}, ValueError, "(8,)"),
        ({"fmri_codes": np.zeros(8, np.float32)}, {}, ValueError, "integer"),
        ({"fmri_codes": np.full(8, 10**6)}, {}, ValueError, "another tokenizer"),
        ("missing.npy", {"tr": TR}, FileNotFoundError, "does not exist"),
        (object(), {"tr": TR}, ValueError, "Unsupported fMRI input"),
    ],
)
def test_bad_inputs_are_refused_with_the_fix(describe, item, options, error, message):
    with pytest.raises(error, match=None) as raised:
        describe(item, **options)
    assert message in str(raised.value)


def test_bad_files_and_atlases_are_refused(describe, tmp_path, rng):
    (tmp_path / "scan.csv").write_text("1,2,3,4\n")
    with pytest.raises(ValueError, match="Unknown fMRI file type"):
        describe(str(tmp_path / "scan.csv"), tr=TR)
    bold, labels, _ = write_tiny_nifti(tmp_path, rng)
    with pytest.raises(ValueError, match="atlas_image="):
        describe(str(bold))  # the processor records no atlas
    with pytest.raises(ValueError, match="header records TR 2"):
        describe(str(bold), atlas_image=labels, tr=1.0)
    three_labels = np.asarray(nib.load(labels).dataobj).copy()
    three_labels[three_labels == 40] = 11
    nib.save(nib.Nifti1Image(three_labels, nib.load(labels).affine), tmp_path / "three.nii.gz")
    with pytest.raises(ValueError, match="gave 3 regions but the model reads 4"):
        describe(str(bold), atlas_image=tmp_path / "three.nii.gz")


def test_bad_options_are_refused(describe, classify):
    scan = scans(1)[0]
    with pytest.raises(ValueError, match="exactly one '<fmri>'"):
        describe(scan, tr=TR, prompt="Describe the scan.")
    with pytest.raises(ValueError, match="exactly one '<fmri>'"):
        describe(scan, tr=TR, prompt="<fmri> and <fmri>")
    with pytest.raises(ValueError, match="chat_template must be one of"):
        describe(scan, tr=TR, chat_template="sometimes")
    with pytest.raises(ValueError, match="Unknown option"):
        describe(scan, tr=TR, temperatur=0.5)
    with pytest.raises(ValueError, match="sliding"):
        describe(scan, tr=TR, crop_strategy="sliding")
    with pytest.raises(ValueError, match="empty list"):
        describe([], tr=TR)
    with pytest.raises(ValueError, match="needs candidate_labels"):
        classify(scan, tr=TR)
    for labels, message in (([], "non-empty list"), (["low"], "at least two"), (["low", "high", "low"], "repeats"),
                            (["low", ""], "non-empty string"), ([" low", "high"], "leading or trailing")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            classify(scan, tr=TR, candidate_labels=labels)
    with pytest.raises(ValueError, match="no '\\{question\\}' placeholder"):
        classify(scan, tr=TR, candidate_labels=["low", "high"], question="Why?", hypothesis_template="<fmri> A:")
    with pytest.raises(ValueError, match="exactly one '<fmri>'"):
        classify(scan, tr=TR, candidate_labels=["low", "high"], hypothesis_template="Q: {question} A:")
    with pytest.raises(ValueError, match="normalize"):
        classify(scan, tr=TR, candidate_labels=["low", "high"], normalize="max")


def test_a_pipeline_without_our_processor_and_bad_saves_are_refused(describe, tmp_path):
    with pytest.raises(ValueError, match="FmriLMProcessor"):
        FmriToTextPipeline(model=describe.model, processor=None)
    with pytest.raises(ValueError, match="FmriLMForCausalLM"):
        save_for_pipelines(describe.model.language_model, describe.processor, tmp_path / "x")
    with pytest.raises(ValueError, match="FmriLMProcessor"):
        save_for_pipelines(describe.model, describe.processor.tokenizer, tmp_path / "x")
