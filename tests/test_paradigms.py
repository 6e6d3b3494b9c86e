"""Stage-3 paradigms: single question, several targets in one answer (order-agnostic), open-ended text."""

import itertools

import datasets
import numpy as np
import pytest

from fmrilm.paradigms import MultiTarget, OpenEnded, Paradigm, SingleQuestion, read_fields
from fmrilm.tasks import MissingLabelsWarning, TaskExample, get_task

SIM_LABELS = {"sex": 1, "coupling_class": 1, "gain_class": 0, "age": 34.0, "age_group": 1, "noise_level": 0.012}


def split() -> datasets.Dataset:
    return datasets.Dataset.from_dict(
        {
            "sex": ["F", "M", None, "male"],
            "coupling_class": [0, 1, 1, 0],
            "gain_class": [1, 0, 1, None],
            "age": [20.0, 40.0, 70.0, 80.0],
            "dataset": ["HCP", "Greifswald", "HCP", "HCP"],
        }
    )


# -- single question -----------------------------------------------------------------------------------


def test_single_question_wraps_one_task():
    paradigm = SingleQuestion("sex")
    task = get_task("sex")
    assert paradigm.name == "single:sex" and paradigm.tasks == (task,) and paradigm.n_scans == 1
    assert paradigm.question_text() == task.question
    assert paradigm.question_text(5) == task.question_text(5)
    assert paradigm.target_text(1) == paradigm.target_text({"sex": 1}) == "Male"
    assert paradigm.parse(" Answer: Female") == {"sex": 0}
    assert paradigm.score("Male", 1) == {"sex": True, "all": True}
    assert paradigm.score("I do not know", 1) == {"sex": False, "all": False}
    with pytest.warns(MissingLabelsWarning):
        assert paradigm.examples(split()) == task.examples(split())


def test_single_question_on_pairs_and_fitted_tasks():
    pairs = SingleQuestion("same_subject")
    assert pairs.n_scans == 2 and pairs.target_text(1) == "Yes"
    dataset = SingleQuestion("dataset")
    assert dataset.needs_fit
    fitted = dataset.fit(split())
    assert not fitted.needs_fit and fitted.target_text(0) == "Greifswald"


# -- multi-target ------------------------------------------------------------------------------------


def test_multi_target_round_trip_in_every_order():
    tasks = ["sex", "coupling_class", "gain_class", "age"]
    paradigm = MultiTarget(tasks)
    labels = {name: SIM_LABELS[name] for name in tasks}
    fields = {t.name: f"{t.field_name}: {t.answer_text(labels[t.name])}" for t in paradigm.tasks}
    for order in itertools.permutations(tasks):
        text = "; ".join(fields[name] for name in order)
        assert paradigm.parse(text) == labels, text
        assert paradigm.score(text, labels) == {**{n: True for n in tasks}, "all": True}


def test_multi_target_training_order_is_seeded_and_evaluation_order_is_canonical():
    paradigm = MultiTarget(list(SIM_LABELS))
    assert paradigm.target_text(SIM_LABELS) == (
        "sex: Male; coupling: high; gain: low; age: 34; age group: young adult; noise: 0.012"
    )
    texts = [paradigm.target_text(SIM_LABELS, seed) for seed in range(20)]
    assert texts == [paradigm.target_text(SIM_LABELS, seed) for seed in range(20)]
    assert len(set(texts)) > 5
    for text in texts:
        assert paradigm.score(text, SIM_LABELS)["all"], text
    question = paradigm.question_text()
    assert "sex (Female/Male)" in question and "coupling (low/high)" in question
    assert len({paradigm.question_text(seed) for seed in range(30)}) > 3


def test_multi_target_parse_accepts_free_layouts():
    paradigm = MultiTarget(["sex", "coupling_class", "gain_class"])
    expected = {"sex": 1, "coupling_class": 1, "gain_class": 0}
    for text in (
        " Gain: LOW, Coupling: High, Sex: male.",
        "<|im_start|>assistant\ncoupling - high\ngain - low\nsex - Male<|im_end|>",
        "high coupling and low gain; a man",
    ):
        assert paradigm.parse(text) == expected, text


def test_multi_target_missing_and_contradicting_fields_score_wrong():
    paradigm = MultiTarget(["sex", "coupling_class", "gain_class"])
    truth = {"sex": 1, "coupling_class": 1, "gain_class": 0}
    assert paradigm.parse("sex: Male; coupling: high") == {"sex": 1, "coupling_class": 1, "gain_class": None}
    assert paradigm.score("sex: Male; coupling: high", truth) == {
        "sex": True,
        "coupling_class": True,
        "gain_class": False,
        "all": False,
    }
    contradicting = "sex: Male; coupling: high; gain: low; gain: high"
    assert paradigm.parse(contradicting)["gain_class"] is None
    assert paradigm.score(contradicting, truth)["gain_class"] is False
    wrong = paradigm.score("sex: Female; coupling: low; gain: low", truth)
    assert wrong == {"sex": False, "coupling_class": False, "gain_class": True, "all": False}


def test_multi_target_examples_need_every_label():
    paradigm = MultiTarget(["sex", "gain_class"])
    with pytest.warns(MissingLabelsWarning, match="skipped 2 of 4"):
        examples = paradigm.examples(split())
    assert examples == [TaskExample((0,), {"sex": 0, "gain_class": 1}), TaskExample((1,), {"sex": 1, "gain_class": 0})]
    assert paradigm.target_text(examples[0].label) == "sex: Female; gain: high"


# -- open-ended --------------------------------------------------------------------------------------


OPEN_TASKS = ["sex", "age_group", "coupling_class", "gain_class", "diagnosis", "age"]
OPEN_LABELS = {"sex": 1, "age_group": 1, "coupling_class": 1, "gain_class": 0, "diagnosis": 0, "age": 27.0}


def open_scores(*wrong: str) -> dict[str, bool]:
    """The expected score of an OPEN_TASKS sentence: False for the ``wrong`` tasks, True for the others and "all"."""
    return {**{name: name not in wrong for name in OPEN_TASKS}, "all": not wrong}


def test_open_ended_sentences_are_seeded_varied_and_read_back():
    paradigm = OpenEnded(OPEN_TASKS)
    sentences = [paradigm.target_text(OPEN_LABELS, seed) for seed in range(30)]
    assert sentences == [paradigm.target_text(OPEN_LABELS, seed) for seed in range(30)]
    assert len(set(sentences)) == 30
    assert len({s.split(" ")[0] for s in sentences}) >= 3  # several frames
    for sentence in [paradigm.target_text(OPEN_LABELS), *sentences]:
        assert paradigm.parse(sentence) == OPEN_LABELS, sentence
        assert paradigm.score(sentence, OPEN_LABELS)["all"], sentence
    assert (
        paradigm.question_text() != paradigm.question_text(1) or paradigm.question_text(2) != paradigm.question_text()
    )


@pytest.mark.parametrize(
    "sentence, expected",
    [
        (
            "This scan comes from a young adult male with high global coupling and low network gain; "
            "a healthy control aged 27.",
            open_scores(),
        ),
        (
            "A young adult man, 27 years old, control, whose global coupling is high while network gain is low.",
            open_scores(),
        ),
        (
            "An elderly woman with low coupling and high gain, a patient aged 80.",
            open_scores(*OPEN_TASKS),
        ),
        (
            "A young adult male who is also female, with high coupling and low gain, a control aged 27.",
            open_scores("sex"),
        ),
        (
            "A young adult male with high coupling.",
            open_scores("gain_class", "diagnosis", "age"),
        ),
        (
            "The global coupling is high and also low; male; young adult; control; gain low; age 27",
            open_scores("coupling_class"),
        ),
    ],
)
def test_open_ended_rule_based_scorer_on_hand_written_sentences(sentence, expected):
    assert OpenEnded(OPEN_TASKS).score(sentence, OPEN_LABELS) == expected


def test_read_fields_reports_missing_and_contradictions():
    tasks = [get_task(n) for n in ("sex", "coupling_class", "gain_class")]
    readings = read_fields("female and male, high gain", tasks)
    assert readings["sex"].contradiction and readings["sex"].label is None
    assert readings["coupling_class"].missing
    assert readings["gain_class"].label == 1
    # "age" inside "age group" does not make the age-group clause an age clause
    age_tasks = [get_task("age"), get_task("age_group")]
    assert read_fields("age group: senior; age: 66", age_tasks)["age"].values == (66.0,)


def test_regression_fields_use_the_written_precision_or_a_tolerance():
    paradigm = OpenEnded(["age"])
    assert paradigm.score("aged 34", {"age": 34.4})["age"]
    assert not paradigm.score("aged 35", {"age": 34.4})["age"]
    assert paradigm.score("aged 37", {"age": 34.4}, tolerance={"age": 5.0})["age"]


# -- bad input ---------------------------------------------------------------------------------------


def test_paradigm_errors():
    with pytest.raises(ValueError, match="each task may appear once"):
        MultiTarget(["sex", "sex"])
    with pytest.raises(ValueError, match="same number of scans"):
        MultiTarget(["sex", "same_subject"])
    with pytest.raises(ValueError, match="unknown task"):
        OpenEnded(["sex", "handedness"])
    with pytest.raises(ValueError, match="at least one task"):
        OpenEnded([])
    with pytest.raises(ValueError, match=r"labels lack \['gain_class'\]"):
        MultiTarget(["sex", "gain_class"]).target_text({"sex": 1})
    with pytest.raises(ValueError, match="must be a mapping"):
        MultiTarget(["sex", "gain_class"]).score("sex: Male", 1)
    with pytest.raises(TypeError):
        Paradigm(["sex"])


def test_paradigms_fit_every_task():
    paradigm = MultiTarget(["sex", "dataset"])
    with pytest.raises(ValueError, match="not fitted"):
        paradigm.target_text({"sex": 1, "dataset": 0})
    fitted = paradigm.fit(split())
    assert isinstance(fitted, MultiTarget) and fitted != paradigm
    assert fitted.target_text({"sex": 1, "dataset": 0}) == "sex: Male; dataset: Greifswald"
    assert fitted.parse("dataset: HCP; sex: female") == {"sex": 0, "dataset": 1}
    assert np.array_equal(fitted.tasks[1].labels(split()), [1, 0, 1, 1])
