"""Publishing to the Hub (fmrilm.hub, ``fmrilm push``) against the local Hub-compatible server in tests/hub_server.py.

Tiny folders are built with the library (a tiny stage-1 processor, a tiny GPT-2 wrapped by
``FmriLMForCausalLM.from_text_model``, a LoRA adapter from PEFT's ``get_peft_model``, a simulated dataset written by
``write_dataset``), pushed in this process, then loaded BY REPO ID in a fresh Python process whose only way to the
files is the local server (``HF_ENDPOINT``, a fresh ``HF_HOME``). Nothing reaches the real Hub.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hub_server import LocalHub
from lm_fixtures import tiny_causal_lm, tiny_tokenizer

import fmrilm  # noqa: F401  (registers the Auto classes)
from fmrilm import FmriFeatureExtractor, FmriTokenizerConfig
from fmrilm.hub import (
    HubPublishError,
    add_push_command,
    check_repo_id,
    load_results,
    push_adapter,
    push_dataset,
    push_model,
    push_processor,
)
from fmrilm.modeling_fmri_tokenizer import FmriTokenizerModel
from fmrilm.modeling_fmrilm import FmriLMForCausalLM
from fmrilm.processing_fmrilm import FmriLMProcessor

SHAPE = dict(n_rois=94, max_timepoints=16, patch_size=8)  # 2 time patches x 94 ROIs = 188 fMRI tokens
PROMPT = "<fmri> Describe the brain activity in this scan."
TESTS = Path(__file__).parent
RESULTS = {
    "results": [
        {"task": "coupling_class", "dataset": "me/simulated", "split": "test", "setting": "0-shot, 3 seeds",
         "metrics": {"balanced_accuracy": {"mean": 0.71, "std": 0.03}, "auroc": 0.8}},
        {"task": "noise_level", "dataset": "me/simulated", "metric": "mae", "value": 0.12},
    ]
}  # fmt: skip


def hub_settings(monkeypatch, hub: LocalHub, hf_home: Path) -> None:
    """Point this process's huggingface_hub at ``hub`` (constants are read at import, so they are patched too)."""
    from huggingface_hub import constants

    for key, value in hub.client_environment(hf_home).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HOME", str(hf_home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    resolve = socket.getaddrinfo

    def loopback_only(host, *args, **kwargs):  # a safety net: this process talks to nothing but the local hub
        if host not in ("127.0.0.1", "localhost"):
            raise OSError(f"tests/test_hub.py blocks network access to {host!r}; only the local hub is reachable")
        return resolve(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", loopback_only)


@pytest.fixture(scope="module")
def local_hub():
    with LocalHub() as hub:
        yield hub


@pytest.fixture
def hub(local_hub, monkeypatch, tmp_path):
    hub_settings(monkeypatch, local_hub, tmp_path / "hf_home")
    local_hub.reset()
    yield local_hub
    local_hub.reset()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Processor, model and adapter folders plus a dataset folder, and reference outputs computed here."""
    from peft import LoraConfig, get_peft_model

    from fmrilm.datasets_scripts import build_simulated, write_dataset

    root = tmp_path_factory.mktemp("hub")
    torch.manual_seed(0)
    fmri_tokenizer = FmriTokenizerModel(FmriTokenizerConfig.preset("tiny", **SHAPE)).eval()
    processor = FmriLMProcessor(
        feature_extractor=FmriFeatureExtractor(**SHAPE, atlas="AAL2"), fmri_tokenizer=fmri_tokenizer
    )
    processor.save_pretrained(root / "processor")
    processor.tokenizer = tiny_tokenizer()
    model = FmriLMForCausalLM.from_text_model(tiny_causal_lm("gpt2", len(processor.tokenizer)), processor).eval()
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")

    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True, init_lora_weights=False)
    adapted = get_peft_model(model, lora).eval()
    adapted.peft_config["default"].base_model_name_or_path = str(root / "model")  # as after training: a local path
    adapted.save_pretrained(root / "adapter")

    bold = np.random.default_rng(0).normal(size=(30, 94)).astype(np.float32)
    inputs = processor(text=PROMPT, fmri=[bold], tr=2.0, return_tensors="pt")
    with torch.no_grad():
        adapter_logits = adapted(**inputs).logits.numpy()
    with adapted.disable_adapter(), torch.no_grad():
        base_logits = adapted(**inputs).logits.numpy()
    assert not np.allclose(
        base_logits, adapter_logits
    )  # the adapter changes the model: the check below means something
    np.savez(root / "reference.npz", bold=bold, codes=inputs["fmri_codes"].numpy(), base=base_logits,
             adapter=adapter_logits)  # fmt: skip

    result = build_simulated(n_subjects=4, duration_s=120, seed=1, progress=False, cache_dir=root / ".cache")
    write_dataset(result, root / "dataset")
    (root / "results.json").write_text(json.dumps(RESULTS))
    return root


@pytest.fixture(scope="module")
def published(local_hub, folders, tmp_path_factory):
    """The four folders pushed once to the module's hub (model, processor, adapter, dataset)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        hub_settings(monkeypatch, local_hub, tmp_path_factory.mktemp("hf_home"))
        return {
            "model": push_model(folders / "model", "me/fmri-lm", results=folders / "results.json",
                                base_model="me/tiny-gpt2", datasets=["me/simulated"]),
            "processor": push_processor(folders / "processor", "me/fmri-tokenizer"),
            "adapter": push_adapter(folders / "adapter", "me/fmri-lm-lora", "me/fmri-lm",
                                    processor_dir=folders / "processor"),
            "dataset": push_dataset(folders / "dataset", "me/simulated"),
        }  # fmt: skip


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fmrilm")
    add_push_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


# ---- round trips ----------------------------------------------------------------------------------


def test_each_push_is_one_commit_with_the_folder_and_a_card(published, local_hub, folders):
    for kind, repo_type in (("model", "model"), ("processor", "model"), ("adapter", "model"), ("dataset", "dataset")):
        result = published[kind]
        history = local_hub.commit_history(result.repo_id, repo_type)
        assert history[0].oid == result.commit_oid and len(result.commit_oid) == 40
        assert len(history) == 2 and history[1].title == "initial commit"  # create_repo's, then exactly one
        stored = local_hub.repo_files(result.repo_id, repo_type)
        assert set(stored) == {".gitattributes", *result.files}
    model_files = local_hub.repo_files("me/fmri-lm")
    for path in ("config.json", "model.safetensors", "processor_config.json", "tokenizer.json",
                 "fmri_tokenizer/model.safetensors", "modeling_fmrilm.py", "README.md"):  # fmt: skip
        assert path in model_files
    assert model_files["model.safetensors"] == (folders / "model" / "model.safetensors").read_bytes()
    adapter_config = json.loads(local_hub.repo_files("me/fmri-lm-lora")["adapter_config.json"])
    assert adapter_config["base_model_name_or_path"] == "me/fmri-lm"  # a repo id, not the local folder
    local_config = json.loads((folders / "adapter" / "adapter_config.json").read_text())
    assert local_config["base_model_name_or_path"] == str(folders / "model")  # the local file is left as it was
    assert {k: v for k, v in adapter_config.items() if k != "base_model_name_or_path"} == {
        k: v for k, v in local_config.items() if k != "base_model_name_or_path"
    }


FRESH_PROCESS = """
    import json, sys, numpy as np, torch
    import fmrilm
    from datasets import Array2D, Dataset, DatasetDict, Features, Value, load_dataset
    from huggingface_hub import DatasetCard, ModelCard
    from lm_fixtures import tiny_causal_lm, tiny_tokenizer
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoProcessor, pipeline

    reference = np.load(sys.argv[1])
    out = {}
    model = AutoModelForCausalLM.from_pretrained("me/fmri-lm").eval()
    processor = AutoProcessor.from_pretrained("me/fmri-lm")
    out["model_class"], out["processor_class"] = type(model).__name__, type(processor).__name__
    inputs = processor(text=sys.argv[2], fmri=[reference["bold"]], tr=2.0, return_tensors="pt")
    out["codes_equal"] = bool(np.array_equal(inputs["fmri_codes"].numpy(), reference["codes"]))
    with torch.no_grad():
        out["base_error"] = float(np.abs(model(**inputs).logits.numpy() - reference["base"]).max())
    stage1 = AutoProcessor.from_pretrained("me/fmri-tokenizer")
    out["stage1_class"] = type(stage1).__name__
    out["stage1_codes_equal"] = bool(np.array_equal(stage1.tokenize_fmri([reference["bold"]], tr=2.0).numpy(),
                                                    reference["codes"]))
    base = AutoModelForCausalLM.from_pretrained("me/fmri-lm")
    adapted = PeftModel.from_pretrained(base, "me/fmri-lm-lora").eval()
    out["adapter_base"] = adapted.peft_config["default"].base_model_name_or_path
    with torch.no_grad():
        out["adapter_error"] = float(np.abs(adapted(**inputs).logits.numpy() - reference["adapter"]).max())
    # PEFT's own push: an adapter on a base loaded by repo id names that repo id, and loads back by it.
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    lora = LoraConfig(r=2, target_modules=["c_attn"], fan_in_fan_out=True, init_lora_weights=False)
    pushed = get_peft_model(AutoModelForCausalLM.from_pretrained("me/fmri-lm"), lora).eval()
    pushed.push_to_hub("me/peft-pushed")
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("me/fmri-lm"), "me/peft-pushed").eval()
    with torch.no_grad():
        out["peft_push"] = {
            "base": reloaded.peft_config["default"].base_model_name_or_path,
            "error": float((pushed(**inputs).logits - reloaded(**inputs).logits).abs().max()),
            "moved": float((pushed(**inputs).logits - model(**inputs).logits).abs().max()),
        }
    data = load_dataset("me/simulated")
    out["splits"] = {name: split.num_rows for name, split in data.items()}
    out["bold_feature"] = repr(data["train"].features["bold"])
    out["bold"] = data["train"].with_format("numpy")[0]["bold"].tolist()
    for name in ("me/fmri-lm", "me/fmri-lm-lora", "me/fmri-tokenizer"):
        out["card:" + name] = ModelCard.load(name).data.to_dict()
    out["card:dataset"] = DatasetCard.load("me/simulated", repo_type="dataset").data.to_dict()

    describe = pipeline("fmri-to-text", model="me/fmri-lm")
    out["pipeline"] = {"type": type(describe).__name__, "result": describe(reference["bold"], tr=2.0, max_new_tokens=4)}

    features = Features({"bold": Array2D(shape=(None, 3), dtype="float32"), "tr": Value("float32")})
    rng = np.random.default_rng(0)
    rows = {"bold": [rng.normal(size=(n, 3)).astype("float32") for n in (4, 6)], "tr": [2.0, 0.72]}
    DatasetDict({"train": Dataset.from_dict(rows, features=features)}).push_to_hub("me/pushed-data")
    back = load_dataset("me/pushed-data")["train"].with_format("numpy")
    lm = tiny_causal_lm("llama", 300)
    lm.push_to_hub("me/pushed-lm")
    tiny_tokenizer().push_to_hub("me/pushed-lm")
    again = AutoModelForCausalLM.from_pretrained("me/pushed-lm")
    out["push_to_hub"] = {
        "data": all(np.array_equal(back[i]["bold"], rows["bold"][i]) for i in range(2)),
        "feature": repr(back.features["bold"]),
        "lm": all(torch.equal(a, b) for a, b in zip(lm.state_dict().values(), again.state_dict().values())),
    }
    print(json.dumps(out, default=str))
"""


@pytest.fixture(scope="module")
def fresh_process(published, local_hub, folders, tmp_path_factory):
    """What a fresh Python process, whose only source is the local hub, loads and pushes by repo id (one process
    for all checks: starting Python with torch/transformers/datasets dominates the time)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING", "TRANSFORMERS_OFFLINE"))}
    env |= local_hub.client_environment(tmp_path_factory.mktemp("fresh_home"))
    env |= {"PYTHONPATH": str(TESTS), "TOKENIZERS_PARALLELISM": "false"}
    argv = [sys.executable, "-c", textwrap.dedent(FRESH_PROCESS), str(folders / "reference.npz"), PROMPT]
    completed = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-4000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_a_fresh_process_loads_model_processor_adapter_and_dataset_by_repo_id(fresh_process, folders):
    output = fresh_process
    assert output["model_class"] == "FmriLMForCausalLM" and output["processor_class"] == "FmriLMProcessor"
    assert output["stage1_class"] == "FmriLMProcessor"
    assert output["codes_equal"] and output["stage1_codes_equal"]
    assert output["base_error"] < 1e-5 and output["adapter_error"] < 1e-5
    assert output["adapter_base"] == "me/fmri-lm"  # PEFT resolved the base by repo id
    # PeftModel.push_to_hub of an adapter whose base came by repo id: published, reloaded, identical, not a no-op.
    assert output["peft_push"]["base"] == "me/fmri-lm"
    assert output["peft_push"]["error"] < 1e-6 and output["peft_push"]["moved"] > 1e-4

    from datasets import load_dataset

    local = load_dataset(str(folders / "dataset"))
    assert output["splits"] == {name: split.num_rows for name, split in local.items()}
    assert output["bold_feature"].startswith("Array2D(shape=(None, 94), dtype='float32'")
    np.testing.assert_array_equal(np.asarray(output["bold"], dtype=np.float32),
                                  local["train"].with_format("numpy")[0]["bold"])  # fmt: skip


def test_pushed_cards_parse_with_the_expected_metadata(fresh_process):
    card = fresh_process["card:me/fmri-lm"]
    assert card["library_name"] == "transformers" and card["pipeline_tag"] == "fmri-to-text"
    assert {"fmri-lm", "fmri"} <= set(card["tags"]) and card["license"] == "apache-2.0"
    assert card["base_model"] == "me/tiny-gpt2" and card["datasets"] == ["me/simulated"]
    metrics = {m["type"]: m["value"] for r in card["model-index"][0]["results"] for m in r["metrics"]}
    assert metrics == {"balanced_accuracy": 0.71, "auroc": 0.8, "mae": 0.12}
    assert {r["dataset"]["split"] for r in card["model-index"][0]["results"]} == {"test"}
    adapter_card = fresh_process["card:me/fmri-lm-lora"]
    assert adapter_card["base_model"] == "me/fmri-lm" and adapter_card["library_name"] == "peft"
    assert fresh_process["card:me/fmri-tokenizer"]["tags"][:2] == ["fmri-lm", "fmri"]
    assert fresh_process["card:dataset"]["configs"][0]["config_name"] == "default"


def test_cards_state_the_preprocessing_and_the_citation(published, local_hub):
    text = local_hub.repo_files("me/fmri-lm")["README.md"].decode()
    for expected in ("| atlas | AAL2 |", "| 94", "2.0 s", "16 TRs = 32 s, strategy `start`", "`robust_roi`",
                     "8 TRs per token: 2 time patches x 94 ROIs = 188 fMRI tokens", "2511.21760",
                     "Apache-2.0", "keep their own", "0.71 +- 0.03", 'from_pretrained("me/fmri-lm")'):  # fmt: skip
        assert expected in text, expected
    adapter = local_hub.repo_files("me/fmri-lm-lora")["README.md"].decode()
    assert 'PeftModel.from_pretrained(base, "me/fmri-lm-lora")' in adapter and "| atlas | AAL2 |" in adapter
    processor = local_hub.repo_files("me/fmri-tokenizer")["README.md"].decode()
    assert "188 fMRI tokens" in processor and "Codebook:" in processor and "2511.21760" in processor


def test_the_pipeline_loads_by_repo_id_in_a_fresh_process(fresh_process):
    output = fresh_process["pipeline"]
    assert output["type"] == "FmriToTextPipeline"
    result = output["result"]
    first = result[0] if isinstance(result, list) else result
    assert isinstance(first["generated_text"], str)


def test_datasets_and_transformers_push_to_hub_round_trip_through_the_server(fresh_process, local_hub):
    assert fresh_process["push_to_hub"] == {"data": True, "feature": "Array2D(shape=(None, 3), dtype='float32')",
                                            "lm": True}  # fmt: skip
    assert "model.safetensors" in local_hub.repo_files("me/pushed-lm")
    assert "README.md" in local_hub.repo_files("me/pushed-data", "dataset")


def test_a_second_push_replaces_the_previous_version_in_one_commit(hub, folders, tmp_path):
    import shutil

    folder = tmp_path / "processor"
    shutil.copytree(folders / "processor", folder)
    (folder / "notes.txt").write_text("first version\n")
    first = push_processor(folder, "me/versioned")
    (folder / "notes.txt").unlink()
    second = push_processor(folder, "me/versioned")
    assert second.deleted == ("notes.txt",) and "notes.txt" not in hub.repo_files("me/versioned")
    assert [c.oid for c in hub.commit_history("me/versioned")][:2] == [second.commit_oid, first.commit_oid]
    assert "notes.txt" in hub.repo_files("me/versioned", revision=first.commit_oid)


def test_the_push_command_publishes_and_reports_the_commit(hub, folders, capsys):
    assert run_cli(["push", "processor", str(folders / "processor"), "--repo-id", "me/cli-processor", "--private"]) == 0
    out = capsys.readouterr().out
    commit = hub.commit_history("me/cli-processor")[0].oid
    assert f"me/cli-processor/commit/{commit}" in out and "one commit" in out
    assert hub._repos[("model", "me/cli-processor")].private


# ---- failures ------------------------------------------------------------------------------------


def test_a_server_error_during_the_commit_publishes_nothing(hub, folders):
    hub.fail("commit", status=500)
    with pytest.raises(HubPublishError, match=r"server error \(500\).*me/broken is unchanged.*try again later"):
        push_model(folders / "model", "me/broken")
    assert set(hub.repo_files("me/broken")) == {".gitattributes"}  # the LFS weights went up, but no commit landed
    assert ("POST", "lfs_batch") in {(m, name) for m, name, _ in hub.requests}
    # The same push succeeds once the server recovers.
    assert "model.safetensors" in push_model(folders / "model", "me/broken").files


def test_a_refused_token_gives_a_clear_error(hub, folders, capsys):
    hub.refuse_token("hf_revoked")
    with pytest.raises(HubPublishError, match=r"refused the token \(401 Unauthorized\).*hf auth login"):
        push_processor(folders / "processor", "me/refused", token="hf_revoked")
    assert ("model", "me/refused") not in hub._repos
    argv = ["push", "model", str(folders / "model"), "--repo-id", "me/refused", "--token", "hf_revoked"]
    assert run_cli(argv) == 1
    assert "401 Unauthorized" in capsys.readouterr().err


def test_offline_mode_is_refused_before_any_request(hub, folders, monkeypatch, capsys):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    for push in (lambda: push_model(folders / "model", "me/offline"),
                 lambda: push_adapter(folders / "adapter", "me/offline", "me/fmri-lm"),
                 lambda: push_processor(folders / "processor", "me/offline"),
                 lambda: push_dataset(folders / "dataset", "me/offline")):  # fmt: skip
        with pytest.raises(HubPublishError, match="offline mode \\(HF_HUB_OFFLINE=1\\).*HF_HUB_OFFLINE=0"):
            push()
    assert run_cli(["push", "dataset", str(folders / "dataset"), "--repo-id", "me/offline"]) == 1
    assert "HF_HUB_OFFLINE" in capsys.readouterr().err
    assert hub.requests == []


def test_incomplete_folders_and_local_paths_are_refused_before_uploading(hub, folders, tmp_path):
    import shutil

    def copy(name: str) -> Path:
        return Path(shutil.copytree(folders / name, tmp_path / name))

    model = copy("model")
    (model / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no model weights"):
        push_model(model, "me/x")
    model = Path(shutil.copytree(folders / "model", tmp_path / "model2"))
    shutil.rmtree(model / "fmri_tokenizer")
    with pytest.raises(FileNotFoundError, match="no fMRI tokenizer"):
        push_model(model, "me/x")
    with pytest.raises(ValueError, match="model_type 'fmri_tokenizer', expected 'fmri_lm'"):
        push_model(folders / "processor" / "fmri_tokenizer", "me/x")
    with pytest.raises(FileNotFoundError, match="no adapter_config.json"):
        push_adapter(folders / "model", "me/x", "me/fmri-lm")
    with pytest.raises(ValueError, match="not a Hub repository id.*not a local path"):
        push_adapter(folders / "adapter", "me/x", str(folders / "model"))
    with pytest.raises(FileNotFoundError, match="no processor_config.json"):
        push_processor(tmp_path, "me/x")
    dataset = copy("dataset")
    for shard in (dataset / "data").glob("*.parquet"):
        shard.unlink()
    with pytest.raises(FileNotFoundError, match="does not hold a written dataset"):
        push_dataset(dataset, "me/x")
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        push_model(tmp_path / "missing", "me/x")
    assert run_cli(["push", "adapter", str(folders / "adapter"), "--repo-id", "me/x"]) == 2  # no --base-model
    assert hub.requests == []


@pytest.mark.parametrize("bad", ["", "/abs/path", "./here", "~/model", "a/b/c", "me/x--y", "me/..", "me/na me"])
def test_repo_ids_must_be_hub_ids(bad):
    with pytest.raises(ValueError, match="Hub repository id"):
        check_repo_id(bad)


def test_results_files_are_checked(tmp_path):
    rows = load_results(_write(tmp_path / "ok.json", RESULTS))
    assert [(r.metric, r.value, r.std) for r in rows] == [
        ("balanced_accuracy", 0.71, 0.03), ("auroc", 0.8, None), ("mae", 0.12, None)]  # fmt: skip
    assert rows[0].setting == "0-shot, 3 seeds" and rows[2].split == "test"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_results(tmp_path / "missing.json")
    bad = {
        "empty": [],
        "no task": [{"dataset": "d", "metric": "mae", "value": 1}],
        "no value": [{"task": "t", "dataset": "d", "metric": "mae"}],
        "nan": [{"task": "t", "dataset": "d", "metric": "mae", "value": float("nan")}],
        "no mean": [{"task": "t", "dataset": "d", "metrics": {"mae": {"std": 1}}}],
    }
    for name, content in bad.items():
        with pytest.raises(ValueError):
            load_results(_write(tmp_path / f"{name}.json", content))


def test_the_evaluation_output_is_a_results_file(tmp_path):
    """`fmrilm evaluate --out` JSON (an evaluate_task result) goes into the card as one row per method and k."""
    from fmrilm.evaluation import evaluate_task

    evaluated = {
        "task": "gain_class", "splits": {"scored": "test", "k_shot_and_baselines_from": "train"},
        "rows": [
            {"name": "fmri-lm", "shots": 0, "seeds": [], "metrics": {
                "balanced_accuracy": {"mean": 0.6, "sd": None, "values": [0.6]},
                "auroc": {"mean": None, "sd": None, "values": [None]}}},
            {"name": "fmri-lm", "shots": 4, "seeds": [0, 1, 2], "metrics": {
                "balanced_accuracy": {"mean": 0.7, "sd": 0.05, "values": [0.65, 0.7, 0.75]}}},
        ],
    }  # fmt: skip
    assert callable(evaluate_task)  # the producer of this format
    rows = load_results(_write(tmp_path / "simulated.json", evaluated))
    assert [(r.task, r.dataset, r.split, r.setting, r.metric, r.value, r.std) for r in rows] == [
        ("gain_class", "simulated", "test", "fmri-lm, 0-shot, 1 seed", "balanced_accuracy", 0.6, None),
        ("gain_class", "simulated", "test", "fmri-lm, 4-shot, 3 seeds", "balanced_accuracy", 0.7, 0.05),
    ]


def _write(path: Path, content) -> Path:
    path.write_text(json.dumps(content))
    return path


# ---- the server speaks the Hub's error protocol ---------------------------------------------------


def test_the_local_hub_answers_with_the_hubs_errors(hub, published):
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    api = HfApi()
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("me/does-not-exist")
    with pytest.raises(RevisionNotFoundError):
        api.model_info("me/fmri-lm", revision="no-such-branch")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("me/fmri-lm", "no-such-file.json")
    info = api.model_info("me/fmri-lm")
    assert info.sha == published["model"].commit_oid and info.pipeline_tag == "fmri-to-text"
    weights = next(s for s in info.siblings if s.rfilename == "model.safetensors")
    assert weights.lfs is not None and len(weights.lfs.sha256) == 64
    path = hf_hub_download("me/fmri-lm", "model.safetensors", revision=info.sha)
    assert Path(path).read_bytes() == hub.repo_files("me/fmri-lm")["model.safetensors"]
    hub.fail("info", status=503)
    with pytest.raises(Exception, match="503"):
        api.model_info("me/fmri-lm")
