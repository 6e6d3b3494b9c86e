"""Stage-3 instruction tuning (fmrilm.training.stage3): tiny end-to-end runs through the command line (a new
adapter, a continued stage-2 adapter), model selection on validation only, answer-only labels, multi-task
sampling, few-shot tuning, and configuration errors.

The workspace is a simulated cohort (11 train, 3 validation, 2 test subjects) described and pre-tokenized
by a tiny stage-1 processor (tests/stage_workspace.py), a tiny Llama, and a real 2-step LoRA stage-2 run
on it whose OUTPUT/model is the stage-3 input. Runs use ``training.cpu=true`` so equality checks hold bitwise.
"""

from __future__ import annotations

import argparse
import json
import shutil

import numpy as np
import pytest
import torch
from datasets import load_dataset
from safetensors.torch import load_file
from stage_workspace import N_TOKENS, build_tokenized_cohort, save_tiny_lms
from transformers import AutoModelForCausalLM, AutoProcessor

import fmrilm  # noqa: F401  (registers the Auto classes)
from fmrilm.paradigms import MultiTarget
from fmrilm.scoring_fmrilm import score_candidates
from fmrilm.tasks import get_task
from fmrilm.training import load_config, stage3
from fmrilm.training.cli import add_train_command
from fmrilm.training.language_model import load_fmri_lm
from fmrilm.training.stage3 import (
    IGNORE_INDEX,
    InstructionCollator,
    InstructionDataset,
    InstructionObjective,
    Stage3Config,
    TaskSpec,
    answer_token_loss,
    epoch_plan,
    instruction_prompt,
    resolve_sources,
    task_shares,
    tune_on_examples,
)

pytestmark = [
    pytest.mark.usefixtures("fresh_accelerate_state"),
    pytest.mark.filterwarnings("ignore:Group ICA with 4 components"),
    pytest.mark.filterwarnings("ignore:AUROC is undefined"),  # a one-class split of the tiny cohort
]

TINY_CONFIG = "fmrilm/training/configs/stage3_tiny.yaml"


def run_align(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fmrilm")
    add_train_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


def run_instruct(argv: list[str]) -> int:
    """``fmrilm train instruct ...`` as the training CLI will wire it (``STAGES["instruct"]``)."""
    parser = argparse.ArgumentParser(prog="fmrilm train instruct")
    stage3.add_arguments(parser)
    return stage3.run_from_args(parser.parse_args(argv))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = build_tokenized_cohort(tmp_path_factory.mktemp("stage3"), n_subjects=16, seed=8)
    save_tiny_lms(root, ("llama",))
    stage2 = [
        f"data.datasets=[{root / 'tokenized'}]", f"output_dir={root / 'stage2'}", f"model.text_model={root / 'llama'}",
        f"model.processor={root / 'processor'}", "data.families=[graph]", "data.batch_size=4", "data.max_length=320",
        "training.max_steps=2", "training.eval_every=2", "training.progress_bar=false", "training.cpu=true",
        "training.warmup_ratio=0.0", "generation.num_scans=0", "t2t.batch_size=0", "lora.enabled=true", "lora.r=4",
        # (token rows off: scoring_fmrilm reads get_input_embeddings().num_embeddings, absent under PEFT TrainableTokens)
        "lora.train_fmri_token_embeddings=false",
    ]  # fmt: skip
    assert run_align(["train", "align", "--config", "fmrilm/training/configs/stage2_tiny.yaml", *stage2]) == 0
    return root


def overrides(workspace, output_dir, *extra, dataset=None):
    return [
        f"data.datasets=[{dataset or workspace / 'tokenized'}]", f"output_dir={output_dir}",
        f"model.path={workspace / 'stage2' / 'model'}", "data.batch_size=4", "data.max_length=400",
        "training.num_epochs=4", "training.eval_every=3", "training.log_every=1", "training.learning_rate=5.0e-3",
        "training.warmup_ratio=0.0", "training.progress_bar=false", "training.cpu=true", "lora.r=4",
        "validation.max_new_tokens=6", *extra,
    ]  # fmt: skip


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def splits(workspace, folder="tokenized"):
    return load_dataset(str(workspace / folder))


def stage2_model(workspace):
    processor = AutoProcessor.from_pretrained(workspace / "stage2" / "model")
    return load_fmri_lm(workspace / "stage2" / "model").eval(), processor


@pytest.fixture(scope="module")
def main_run(workspace, tmp_path_factory):
    output = tmp_path_factory.mktemp("run") / "main"
    settings = overrides(
        workspace, output, "model.base_repo_id=someone/fmrilm-stage2-tiny",
        "tasks=[{name: coupling_class, paradigm: single, weight: 2.0}, "
        "{name: coupling_class+gain_class, paradigm: multi, weight: 1.0}]",
    )  # fmt: skip
    assert run_instruct(["--config", TINY_CONFIG, *settings]) == 0
    return output


# ---- end to end ---------------------------------------------------------------------------------


def test_a_new_adapter_learns_the_answers_and_exports_loadable_outputs(workspace, main_run):
    from peft import PeftModel

    records = read_jsonl(main_run / "metrics.jsonl")
    train = [r for r in records if r["split"] == "train"]
    validation = [r for r in records if r["split"] == "validation"]
    assert all(np.isfinite(r["loss"]) and r["loss"] == pytest.approx(r["answer_loss"]) for r in train)
    assert np.mean([r["loss"] for r in train[-3:]]) < np.mean([r["loss"] for r in train[:3]])
    assert validation[-1]["answer_loss"] < validation[0]["answer_loss"]
    expected = {"answer_loss", "mean_balanced_accuracy", "coupling_class/balanced_accuracy", "coupling_class/auroc",
                "coupling_class/macro_f1", "coupling_class+gain_class/coupling_class_accuracy",
                "coupling_class+gain_class/all_accuracy"}  # fmt: skip
    assert expected <= set(validation[0])

    summary = json.loads((main_run / "training_summary.json").read_text())
    assert summary["best_value"] == max(r["mean_balanced_accuracy"] for r in validation)
    assert summary["validation"]["mean_balanced_accuracy"] == summary["best_value"]
    assert {"coupling_class/balanced_accuracy", "coupling_class/auroc"} <= set(summary["test"])
    assert summary["splits"] == {"train": 11, "validation": 3, "test": 2}
    # Weights 2 : 1 over 11 + 11 training examples -> 15 and 7 per epoch (largest remainder).
    assert [t["examples_per_epoch"] for t in summary["tasks"]] == [15, 7]

    # Only the LM's projections are adapted: no fMRI module, no token rows (they stay frozen).
    adapter = load_file(main_run / "adapter" / "adapter_model.safetensors")
    assert adapter and all("lora_" in name and ".language_model." in name for name in adapter)
    assert {name.split(".")[-2] for name in adapter} == {"lora_A", "lora_B"}
    config = json.loads((main_run / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "someone/fmrilm-stage2-tiny"

    merged = AutoModelForCausalLM.from_pretrained(main_run / "model").eval()
    processor = AutoProcessor.from_pretrained(main_run / "model")
    assert type(merged).__name__ == "FmriLMForCausalLM" and type(processor).__name__ == "FmriLMProcessor"
    base, _ = stage2_model(workspace)
    for name in ("fmri_embed", "roi_embed", "fmri_head"):
        assert torch.equal(getattr(merged, name).weight, getattr(base, name).weight)
    with_adapter = PeftModel.from_pretrained(base, main_run / "adapter").eval()
    codes = np.asarray(splits(workspace)["validation"]["fmri_codes"][:2], dtype=np.int64)
    prompt, templated = instruction_prompt(processor, get_task("coupling_class").question, 1)
    options = dict(add_special_tokens=not templated)
    scores = score_candidates(merged, processor, [prompt] * 2, codes, ["low", "high"], **options)
    again = score_candidates(with_adapter, processor, [prompt] * 2, codes, ["low", "high"], **options)
    np.testing.assert_allclose(scores, again, atol=1e-4)
    # The exported model is the best step's: its validation balanced accuracy is the summary's.
    labels = np.asarray(splits(workspace)["validation"]["coupling_class"])
    all_codes = np.asarray(splits(workspace)["validation"]["fmri_codes"], dtype=np.int64)
    full = score_candidates(merged, processor, [prompt] * len(labels), all_codes, ["low", "high"], **options)
    from fmrilm.evaluation import classification_metrics

    probabilities = np.exp(full - full.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    assert classification_metrics(labels, probabilities)["balanced_accuracy"] == pytest.approx(
        summary["validation"]["coupling_class/balanced_accuracy"]
    )


def test_selection_never_reads_the_test_split(workspace, main_run, tmp_path):
    """Garbage test labels: the same best step and validation metrics, other test metrics."""
    garbled = tmp_path / "garbled"
    shutil.copytree(workspace / "tokenized", garbled)
    (test_file,) = (garbled / "data").glob("test-*.parquet")
    test = load_dataset("parquet", data_files=str(test_file), split="train")
    test = test.map(lambda row: {"coupling_class": 1 - row["coupling_class"], "gain_class": 1 - row["gain_class"]})
    test.to_parquet(str(test_file))
    settings = overrides(
        workspace, tmp_path / "run", "model.base_repo_id=someone/fmrilm-stage2-tiny",
        "tasks=[{name: coupling_class, paradigm: single, weight: 2.0}, "
        "{name: coupling_class+gain_class, paradigm: multi, weight: 1.0}]", dataset=garbled,
    )  # fmt: skip
    assert run_instruct(["--config", TINY_CONFIG, *settings]) == 0
    original = json.loads((main_run / "training_summary.json").read_text())
    changed = json.loads((tmp_path / "run" / "training_summary.json").read_text())
    assert changed["best_step"] == original["best_step"] and changed["validation"] == original["validation"]
    assert changed["test"] != original["test"]
    key = "coupling_class/accuracy"
    assert changed["test"][key] == pytest.approx(1 - original["test"][key])


def test_continuing_the_stage2_adapter_starts_from_the_stage2_model(workspace, tmp_path):
    from peft import PeftModel

    stage2_adapter = workspace / "stage2" / "adapter"
    config = load_config(
        Stage3Config, TINY_CONFIG, overrides(workspace, tmp_path / "x", f"lora.continue_adapter={stage2_adapter}")
    )
    _, processor = stage2_model(workspace)
    rebuilt, base_name = stage3._continued_model(config, processor)
    assert isinstance(rebuilt, PeftModel) and base_name == str(workspace / "llama")
    merged, _ = stage2_model(workspace)
    rows = splits(workspace)["validation"]
    inputs = processor(text=["<fmri> Is coupling high?"], fmri_codes=np.asarray(rows["fmri_codes"][:1]))
    with torch.no_grad():
        text_ids = slice(0, len(processor.tokenizer) - 3)  # the fMRI placeholders are never predicted
        expected = merged(**inputs).logits[..., text_ids]
        got = rebuilt.eval()(**inputs).logits[..., text_ids]
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)

    output = tmp_path / "continued"
    settings = overrides(workspace, output, f"lora.continue_adapter={stage2_adapter}", "training.num_epochs=1")
    assert run_instruct(["--config", TINY_CONFIG, *settings]) == 0
    summary = json.loads((output / "training_summary.json").read_text())
    assert summary["continued_adapter"] == str(stage2_adapter) and summary["adapter_base_model"] == str(
        workspace / "llama"
    )
    before, after = (
        load_file(stage2_adapter / "adapter_model.safetensors"),
        load_file(output / "adapter" / "adapter_model.safetensors"),
    )
    assert before.keys() == after.keys() and any("fmri_embed" in name for name in after)
    assert any(not torch.equal(before[name], after[name]) for name in before if "lora_B" in name)


# ---- prompts, labels and the loss ---------------------------------------------------------------


def test_labels_cover_only_the_answer_and_eos_and_the_loss_is_theirs(workspace):
    model, processor = stage2_model(workspace)
    data = splits(workspace)
    train = data["train"]
    sources = resolve_sources([TaskSpec(name="coupling_class")], data["validation"], train_split=train)
    codes = np.asarray(data["validation"]["fmri_codes"])
    dataset = InstructionDataset(sources, codes, fixed=True)
    items = [dataset[i] for i in range(len(dataset))]
    batch = InstructionCollator(processor)(items)
    tokenizer = processor.tokenizer
    prompt, templated = instruction_prompt(processor, get_task("coupling_class").question, 1)
    # The test tokenizer has a chat template: the question is the user turn, then the assistant header.
    assert templated and prompt.startswith("<|user|> <fmri>\n### Question: ") and prompt.endswith("<|assistant|> ")
    block = {model.config.fmri_token_id, model.config.fmri_start_token_id, model.config.fmri_end_token_id}
    for row, item in enumerate(items):
        labelled = batch["labels"][row] != IGNORE_INDEX
        ids = batch["input_ids"][row][labelled].tolist()
        assert ids[-1] == tokenizer.eos_token_id and tokenizer.decode(ids[:-1]) == " " + item["target"]
        assert item["target"] in ("low", "high")
        first = int(labelled.nonzero()[0])
        assert (
            not labelled[:first].any()
            and int((batch["input_ids"][row] == model.config.fmri_token_id).sum()) == N_TOKENS
        )
        prompt_ids = [i for i in batch["input_ids"][row][:first].tolist() if i not in block]
        assert tokenizer.decode(prompt_ids) == prompt.replace("<fmri>", "")
    loss, metrics = InstructionObjective()(model, batch)
    with torch.no_grad():
        output = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], fmri_codes=batch["fmri_codes"]
        )
    manual = torch.nn.functional.cross_entropy(
        output.logits[:, :-1].reshape(-1, output.logits.shape[-1]),
        batch["labels"][:, 1:].reshape(-1),
        ignore_index=-100,
    )
    assert float(loss) == pytest.approx(float(manual), rel=1e-5) and float(metrics["answer_loss"]) == float(loss)
    # No F2F term: the fMRI loss weight does not enter the stage-3 objective.
    model.config.f2f_weight = 100.0
    assert float(InstructionObjective()(model, batch)[0]) == pytest.approx(float(loss), rel=1e-6)
    # Labelling the prompt too (the official code's B8 in stage 2) would give another loss.
    everything = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX)
    total, count = answer_token_loss(output.logits, everything)
    assert float(total / count) != pytest.approx(float(loss))


def test_training_questions_are_paraphrases_and_validation_questions_the_base_one(workspace):
    data = splits(workspace)
    train = data["train"]
    sources = resolve_sources([TaskSpec(name="coupling_class")], train, train_split=train)
    codes = np.asarray(train["fmri_codes"])
    task = get_task("coupling_class")
    training = InstructionDataset(sources, codes, seed=0)
    questions = {training[i]["question"] for i in range(len(training))}
    assert len(questions) > 1 and questions <= {task.question, *task.paraphrases}
    fixed = InstructionDataset(sources, codes, fixed=True)
    assert {fixed[i]["question"] for i in range(len(fixed))} == {task.question}
    assert [fixed[i]["target"] for i in range(len(fixed))] == [task.answers[v] for v in train["coupling_class"]]


# ---- multi-task sampling ------------------------------------------------------------------------


def test_task_shares_follow_the_weights_and_flatten_with_temperature():
    np.testing.assert_allclose(task_shares([2.0, 1.0, 1.0]), [0.5, 0.25, 0.25])
    np.testing.assert_allclose(task_shares([4.0, 1.0], temperature=2.0), [2 / 3, 1 / 3])
    np.testing.assert_allclose(task_shares([100.0, 1.0], temperature=1e6), [0.5, 0.5], atol=1e-4)
    with pytest.raises(ValueError, match="positive numbers"):
        task_shares([1.0, 0.0])
    with pytest.raises(ValueError, match="temperature"):
        task_shares([1.0], temperature=0.0)


def test_epoch_plan_draws_each_task_in_proportion_seeded_by_epoch():
    sizes, weights = [5, 40, 3], [1.0, 2.0, 1.0]
    plan = epoch_plan(sizes, weights, total=40, temperature=1.0, seed=0, epoch=0)
    assert plan.shape == (40, 2) and np.bincount(plan[:, 0]).tolist() == [10, 20, 10]
    for task, size in enumerate(sizes):
        drawn = np.bincount(plan[plan[:, 0] == task, 1], minlength=size)
        assert drawn.max() - drawn.min() <= 1  # whole passes without replacement
    assert len(set(plan[plan[:, 0] == 1, 1].tolist())) == 20
    np.testing.assert_array_equal(plan, epoch_plan(sizes, weights, total=40, temperature=1.0, seed=0, epoch=0))
    assert not np.array_equal(plan, epoch_plan(sizes, weights, total=40, temperature=1.0, seed=0, epoch=1))
    assert np.bincount(epoch_plan(sizes, weights, total=7, temperature=1.0, seed=0, epoch=0)[:, 0]).sum() == 7
    with pytest.raises(ValueError, match="at least one training example"):
        epoch_plan([0, 3], [1.0, 1.0], total=4, temperature=1.0, seed=0, epoch=0)


def test_the_dataset_redraws_its_mix_every_epoch(workspace):
    data = splits(workspace)
    train = data["train"]
    specs = [TaskSpec(name="coupling_class", weight=3.0), TaskSpec(name="gain_class", weight=1.0)]
    sources = resolve_sources(specs, train, train_split=train)
    dataset = InstructionDataset(sources, np.asarray(train["fmri_codes"]), seed=1, examples_per_epoch=12)
    assert len(dataset) == 12 and np.bincount(dataset.plan[:, 0]).tolist() == [9, 3]
    first = dataset.plan.copy()
    dataset.set_epoch(1)
    assert len(dataset) == 12 and np.bincount(dataset.plan[:, 0]).tolist() == [9, 3]
    assert not np.array_equal(first, dataset.plan)
    item = dataset[0]
    assert item["fmri_codes"].shape == (1, N_TOKENS) and item["target"] in ("low", "high")


# ---- few-shot tuning ----------------------------------------------------------------------------


def test_tune_on_examples_moves_the_scores_of_a_copy_and_is_seeded(workspace):
    model, processor = stage2_model(workspace)
    data = splits(workspace)
    train, validation = data["train"], data["validation"]
    task = get_task("coupling_class").fit(train)
    examples = task.examples(train)[:4]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    prompt, templated = instruction_prompt(processor, task.question, 1)
    codes = np.asarray(validation["fmri_codes"], dtype=np.int64)

    def scores(m):
        return score_candidates(m, processor, [prompt] * len(codes), codes, list(task.candidates()),
                                add_special_tokens=not templated)  # fmt: skip

    before = scores(model)
    rng_state = torch.get_rng_state()
    tuned = tune_on_examples(model, processor, task, train, examples, steps=6, learning_rate=1e-2, seed=3, batch_size=2)
    assert torch.equal(torch.get_rng_state(), rng_state)  # the global RNG is left alone
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # the input model is unchanged
    assert not model.training and not tuned.training
    after = scores(tuned)
    assert np.abs(after - before).max() > 1e-3
    np.testing.assert_array_equal(scores(model), before)
    again = tune_on_examples(model, processor, task, train, examples, steps=6, learning_rate=1e-2, seed=3, batch_size=2)
    np.testing.assert_array_equal(scores(again), after)
    trainable = {n for n, p in tuned.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)

    # A paradigm takes plain examples too: labels come from each task's column.
    paradigm = MultiTarget(["coupling_class", "gain_class"]).fit(train)
    assert tune_on_examples(model, processor, paradigm, train, examples, steps=1, seed=0) is not model
    with pytest.raises(ValueError, match="at least one example"):
        tune_on_examples(model, processor, task, train, [], steps=1)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        tune_on_examples(model, processor, task, train, examples, steps=0)


# ---- configuration errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [("tasks=[]", "at least one task"),
     ("tasks=[{name: coupling_class, weight: 0}]", "weight must be a positive"),
     ("tasks=[{name: coupling_class+gain_class}]", "use paradigm multi or open"),
     ("tasks=[{name: coupling_class}, {name: coupling_class}]", "twice"),
     ("tasks=[{name: coupling_class, paradigm: essay}]", "not one of"),
     ("lora.enabled=false&lora.continue_adapter=x", "needs lora.enabled=true"),
     ("data.test_split=validation", "must differ"),
     ("sampling.temperature=0", "sampling.temperature"),
     ("lora.r=0", "lora needs r >= 1")],
)  # fmt: skip
def test_invalid_settings_are_refused_with_a_clear_message(override, message):
    base = ["data.datasets=[x]", "model.path=x"]
    with pytest.raises(ValueError, match=message):
        load_config(Stage3Config, TINY_CONFIG, [*base, *override.split("&")])


def test_run_errors_exit_with_a_message(workspace, tmp_path, capsys):
    settings = overrides(workspace, tmp_path / "a", "tasks=[{name: no_such_task}]")
    assert run_instruct(["--config", TINY_CONFIG, *settings]) == 2
    assert "unknown task(s) ['no_such_task']" in capsys.readouterr().err
    settings = overrides(workspace, tmp_path / "b", "tasks=[{name: noise_level}]")
    assert run_instruct(["--config", TINY_CONFIG, *settings]) == 2
    assert "needs a single-question classification task" in capsys.readouterr().err
    settings = overrides(workspace, tmp_path / "c", f"model.path={tmp_path / 'missing'}")
    assert run_instruct(["--config", TINY_CONFIG, *settings]) == 2
    assert "OUTPUT/model" in capsys.readouterr().err
    settings = overrides(workspace, tmp_path / "d", f"model.path={workspace / 'stage2' / 'model'}",
                         f"data.datasets=[{workspace / 'raw'}]")  # fmt: skip
    assert run_instruct(["--config", TINY_CONFIG, *settings]) == 2
    assert "fmri_codes" in capsys.readouterr().err
