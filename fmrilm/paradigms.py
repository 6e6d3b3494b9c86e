"""Stage-3 paradigms: how one or several tasks become one question and one answer (SPEC 5.1, 5.3, 5.4).

- :class:`SingleQuestion` - one task, one question, the answer is its verbalizer (``"Male"``).
- :class:`MultiTarget` - one question asks for several targets; the answer lists them as
  ``"sex: Male; coupling: high"`` in a seeded random order during training (canonical order for
  ``seed=None``); :meth:`MultiTarget.parse` is order-agnostic: fields are found by their names and
  answer words anywhere in the text.
- :class:`OpenEnded` - the answer is a free sentence from several templates and phrasings
  (``"This scan comes from a participant with a male brain, young adult age group and high global
  coupling."``), seeded; a rule-based reader (no LLM judge) finds each field's answer words.

All three share one interface: ``name``, ``tasks``, ``n_scans``, ``question_text(seed=None)``,
``target_text(labels, seed=None)``, ``parse(text) -> {task: label | None}``,
``score(text, labels) -> {task: bool, "all": bool}``, ``fit(train_split)``, ``examples(split, seed)``
(``TaskExample`` whose ``label`` is ``{task name: label}``; ``SingleQuestion`` keeps scalar labels).

How free text is read (MultiTarget and OpenEnded):

1. Chat-template debris is removed; the text is cut into sentences at ``; . newline`` (a decimal
   point does not cut) and sentences into clauses at commas and the words "and", "but", "with",
   "while", "whereas".
2. A clause belongs to a task when it contains one of the task's keywords (``"coupling"``); a
   keyword inside a longer keyword of another task ("age" in "age group") does not count. A clause
   without any keyword continues the previous clause of its sentence ("coupling is high and low").
3. A classification task whose answer words are not shared with another task of the paradigm (sex:
   Female/Male, woman/man ...) is read in the whole text; tasks that share words ("low"/"high" for
   coupling and gain) and regression tasks (numbers) are read only in their own clauses.
4. One distinct answer -> that label; none -> missing (``None``, scored wrong); two different
   answers for one field -> contradiction (``None``, scored wrong). Negations are not interpreted.
"""

from __future__ import annotations

import abc
import functools
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .tasks import Label, MissingLabelsWarning, Task, TaskExample, clean_generated_text, get_task

__all__ = ["FieldReading", "MultiTarget", "OpenEnded", "Paradigm", "SingleQuestion", "read_fields"]


@dataclass(frozen=True)
class FieldReading:
    """What the reader found for one field: the distinct answers, in reading order."""

    values: tuple[Label, ...]

    @property
    def label(self) -> Label | None:
        """The answer when exactly one was found, else ``None``."""
        return self.values[0] if len(self.values) == 1 else None

    @property
    def missing(self) -> bool:
        return not self.values

    @property
    def contradiction(self) -> bool:
        return len(self.values) > 1


_SENTENCE_SEPARATOR = re.compile(r"[;\n]|\.(?!\d)")
_CLAUSE_SEPARATOR = re.compile(r",|\b(?:and|but|with|while|whereas)\b", flags=re.IGNORECASE)


def _sentences(text: str) -> list[list[str]]:
    """Sentences (cut at ``; . newline``, not at a decimal point), each a list of clauses."""
    sentences = []
    for sentence in _SENTENCE_SEPARATOR.split(text):
        clauses = [c for c in _CLAUSE_SEPARATOR.split(sentence) if c.strip()]
        if clauses:
            sentences.append(clauses)
    return sentences


@functools.lru_cache(maxsize=256)
def _keyword_pattern(keyword: str) -> re.Pattern[str]:
    body = re.escape(keyword.lower()).replace(r"\ ", r"[\s_-]+")
    return re.compile(rf"(?<![\w-]){body}(?![\w-])", flags=re.IGNORECASE)


def _keyword_spans(clause: str, task: Task) -> list[tuple[int, int]]:
    return [m.span() for keyword in task.keywords for m in _keyword_pattern(keyword).finditer(clause)]


def _distinct(values: Sequence[Label], task: Task) -> tuple[Label, ...]:
    seen: dict[Any, Label] = {}
    for value in values:
        key = round(float(value), task.source.decimals) if task.kind == "regression" else int(value)
        seen.setdefault(key, value)
    return tuple(seen.values())


def _clause_owners(clause: str, tasks: Sequence[Task]) -> set[str]:
    """Names of the tasks whose keywords occur in ``clause`` (not inside a longer keyword of another)."""
    all_spans = [(task.name, span) for task in tasks for span in _keyword_spans(clause, task)]

    def inside_other(name: str, span: tuple[int, int]) -> bool:
        return any(
            other != name and o[0] <= span[0] and span[1] <= o[1] and (o[1] - o[0]) > (span[1] - span[0])
            for other, o in all_spans
        )

    return {name for name, span in all_spans if not inside_other(name, span)}


def read_fields(text: str, tasks: Sequence[Task]) -> dict[str, FieldReading]:
    """Read every task's answer from free text (order-agnostic, see the module docstring)."""
    cleaned = clean_generated_text(text)
    clauses: list[str] = []
    owners: list[set[str]] = []
    for sentence in _sentences(cleaned):
        previous: set[str] = set()
        for clause in sentence:
            own = _clause_owners(clause, tasks) or previous
            clauses.append(clause)
            owners.append(own)
            previous = own

    words = {
        task.name: {re.sub(r"[\s_-]+", "", w) for group in task.answer_words() for w in group}
        for task in tasks
        if task.kind == "classification"
    }
    readings: dict[str, FieldReading] = {}
    for task in tasks:
        shared = task.kind == "regression" or any(
            words[task.name] & other_words for name, other_words in words.items() if name != task.name
        )
        if shared:
            found = [
                v for clause, own in zip(clauses, owners) if task.name in own for _, v in task.find_answers(clause)
            ]
        else:
            found = [v for _, v in task.find_answers(cleaned)]
        readings[task.name] = FieldReading(_distinct(found, task))
    return readings


def _natural_join(parts: Sequence[str]) -> str:
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


class Paradigm(abc.ABC):
    """Base class: a question about one or more tasks and its answer format."""

    kind: str = ""

    def __init__(self, tasks: Sequence[Task | str]) -> None:
        if isinstance(tasks, Task | str):
            tasks = [tasks]
        resolved = tuple(get_task(t) for t in tasks)
        if not resolved:
            raise ValueError(f"{type(self).__name__} needs at least one task")
        names = [t.name for t in resolved]
        if len(set(names)) != len(names):
            raise ValueError(f"{type(self).__name__}: each task may appear once, got {names}")
        scans = {t.n_scans for t in resolved}
        if len(scans) != 1:
            raise ValueError(
                f"{type(self).__name__}: all tasks must ask about the same number of scans, got "
                f"{ {t.name: t.n_scans for t in resolved} }; put pair tasks in their own SingleQuestion"
            )
        self.tasks: tuple[Task, ...] = resolved

    @property
    def name(self) -> str:
        return f"{self.kind}:{'+'.join(t.name for t in self.tasks)}"

    @property
    def n_scans(self) -> int:
        return self.tasks[0].n_scans

    @property
    def needs_fit(self) -> bool:
        return any(t.needs_fit for t in self.tasks)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({[t.name for t in self.tasks]})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.tasks == self.tasks

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.tasks))

    def fit(self, train_split: Any) -> Paradigm:
        """The same paradigm with every task fitted on the TRAINING split (see ``Task.fit``)."""
        fitted = type(self)([t.fit(train_split) for t in self.tasks])
        return fitted

    def _labels(self, labels: Mapping[str, Label] | Label) -> dict[str, Label]:
        if not isinstance(labels, Mapping):
            raise ValueError(
                f"{self.name}: labels must be a mapping task name -> label for {[t.name for t in self.tasks]}, "
                f"got {labels!r}"
            )
        missing = [t.name for t in self.tasks if t.name not in labels]
        if missing:
            raise ValueError(f"{self.name}: labels lack {missing}; got keys {sorted(labels)}")
        return {t.name: labels[t.name] for t in self.tasks}

    def examples(self, split: Any, seed: int = 0) -> list[TaskExample]:
        """Rows with a usable label for EVERY task; ``label`` is ``{task name: label}``.

        Rows missing any label are skipped and counted in a ``MissingLabelsWarning``.
        """
        if self.n_scans != 1:
            raise ValueError(f"{self.name}: multi-task paradigms take single-scan tasks only")
        columns = [t.labels(split) for t in self.tasks]
        usable = np.ones(len(split), dtype=bool)
        for task, values in zip(self.tasks, columns):
            usable &= (values >= 0) if task.kind == "classification" else ~np.isnan(values)
        skipped = int((~usable).sum())
        if skipped:
            warnings.warn(
                f"{self.name}: skipped {skipped} of {len(split)} rows lacking a usable label for some task",
                MissingLabelsWarning,
                stacklevel=2,
            )
        rows = np.flatnonzero(usable)
        if rows.size == 0:
            raise ValueError(f"{self.name}: no row has a usable label for all of {[t.name for t in self.tasks]}")
        return [
            TaskExample(
                (int(i),),
                {
                    t.name: int(values[i]) if t.kind == "classification" else float(values[i])
                    for t, values in zip(self.tasks, columns)
                },
            )
            for i in rows
        ]

    @abc.abstractmethod
    def question_text(self, seed: int | None = None) -> str:
        """The question: the base wording for ``seed=None`` (validation/test), else a seeded one."""

    @abc.abstractmethod
    def target_text(self, labels: Mapping[str, Label], seed: int | None = None) -> str:
        """The answer text (no leading space) for ``{task name: label}``."""

    def parse(self, text: str) -> dict[str, Label | None]:
        """Each task's answer read from ``text`` (``None``: missing or contradictory)."""
        return {name: reading.label for name, reading in read_fields(text, self.tasks).items()}

    def score(
        self, text: str, labels: Mapping[str, Label], *, tolerance: Mapping[str, float] | None = None
    ) -> dict[str, bool]:
        """Per task: is the answer read from ``text`` right? Plus ``"all"``: every field right.

        Regression fields count as right within ``tolerance[name]`` (default: half a unit of the
        task's last written decimal, i.e. the same written value).
        """
        truth = self._labels(labels)
        parsed = self.parse(text)
        result: dict[str, bool] = {}
        for task in self.tasks:
            value = parsed[task.name]
            if value is None:
                result[task.name] = False
            elif task.kind == "classification":
                result[task.name] = int(value) == int(truth[task.name])
            else:
                limit = (tolerance or {}).get(task.name, 0.5 * 10.0**-task.source.decimals + 1e-12)
                result[task.name] = abs(float(value) - float(truth[task.name])) <= limit
        result["all"] = all(result.values())
        return result


class SingleQuestion(Paradigm):
    """One task: its question, its verbalizer as the answer."""

    kind = "single"

    def __init__(self, task: Task | str) -> None:
        if not isinstance(task, Task | str):
            raise ValueError(f"SingleQuestion takes one task (a Task or its name), got {task!r}")
        super().__init__([task])

    @property
    def task(self) -> Task:
        return self.tasks[0]

    def fit(self, train_split: Any) -> SingleQuestion:
        return SingleQuestion(self.task.fit(train_split))

    def _labels(self, labels: Mapping[str, Label] | Label) -> dict[str, Label]:
        if isinstance(labels, Mapping):
            return super()._labels(labels)
        return {self.task.name: labels}

    def examples(self, split: Any, seed: int = 0) -> list[TaskExample]:
        """The task's own examples (scalar labels; pairs for pair tasks)."""
        return self.task.examples(split, seed)

    def question_text(self, seed: int | None = None) -> str:
        return self.task.question_text(seed)

    def target_text(self, labels: Mapping[str, Label] | Label, seed: int | None = None) -> str:
        """The verbalizer (no leading space); ``labels`` may be the scalar label or ``{task: label}``."""
        return self.task.answer_text(self._labels(labels)[self.task.name])

    def parse(self, text: str) -> dict[str, Label | None]:
        """``{task: task.parse(text)}`` (first answer in reading order)."""
        return {self.task.name: self.task.parse(text)}


def _field_hint(task: Task) -> str:
    if task.kind == "classification" and not task.needs_fit and len(task.answers) <= 6:
        return f"{task.field_name} ({'/'.join(task.answers)})"
    return task.field_name


_MULTI_QUESTIONS: tuple[str, ...] = (
    "Report the subject's {fields}. Answer as 'field: answer' pairs separated by semicolons.",
    "What are the {fields} of this subject? Give each as 'field: answer', separated by ';'.",
    "From this scan, state the {fields}. Use the format 'field: answer; field: answer'.",
    "Tell me the {fields} of the participant, written as 'field: answer' separated by semicolons.",
    "Predict the following for this subject: {fields}. Reply with 'field: answer' items joined by ';'.",
)


class MultiTarget(Paradigm):
    """One question for several targets; answer ``"sex: Male; coupling: high"`` (seeded order)."""

    kind = "multi"

    def __init__(self, tasks: Sequence[Task | str]) -> None:
        super().__init__(tasks)
        fields = [t.field_name.lower() for t in self.tasks]
        if len(set(fields)) != len(fields):
            raise ValueError(f"MultiTarget: field names must differ, got {fields}")

    def _order(self, seed: int | None) -> list[Task]:
        if seed is None:
            return list(self.tasks)
        return [self.tasks[i] for i in np.random.default_rng(seed).permutation(len(self.tasks))]

    def question_text(self, seed: int | None = None) -> str:
        """Base wording, fields in canonical order (``seed=None``), or a seeded wording and field order."""
        template = (
            _MULTI_QUESTIONS[0]
            if seed is None
            else _MULTI_QUESTIONS[int(np.random.default_rng([seed, 1]).integers(len(_MULTI_QUESTIONS)))]
        )
        return template.format(fields=_natural_join([_field_hint(t) for t in self._order(seed)]))

    def target_text(self, labels: Mapping[str, Label], seed: int | None = None) -> str:
        """``"field: answer; field: answer"``, canonical order for ``seed=None``, else a seeded order."""
        truth = self._labels(labels)
        return "; ".join(f"{t.field_name}: {t.answer_text(truth[t.name])}" for t in self._order(seed))


_OPEN_QUESTIONS: tuple[str, ...] = (
    "Describe the subject of this scan ({fields}).",
    "Write one sentence about this participant covering {fields}.",
    "What can you tell about this subject's {fields}?",
    "Summarise the scan's {fields} in a sentence.",
    "Give a short description of the subject, including {fields}.",
)

_OPEN_FRAMES: tuple[str, ...] = (
    "This scan comes from a participant with {facts}.",
    "The recording shows {facts}.",
    "This brain scan is characterised by {facts}.",
    "Summary of the subject: {facts}.",
    "We observe {facts} in this participant.",
)


class OpenEnded(Paradigm):
    """A descriptive sentence (seeded frame, phrasings and fact order), scored field by field by rules."""

    kind = "open"

    def question_text(self, seed: int | None = None) -> str:
        template = (
            _OPEN_QUESTIONS[0]
            if seed is None
            else _OPEN_QUESTIONS[int(np.random.default_rng([seed, 1]).integers(len(_OPEN_QUESTIONS)))]
        )
        return template.format(fields=_natural_join([t.field_name for t in self.tasks]))

    def target_text(self, labels: Mapping[str, Label], seed: int | None = None) -> str:
        """One sentence stating every field; ``seed=None`` = first frame, phrasings, canonical order."""
        truth = self._labels(labels)
        if seed is None:
            frame, order, phrase_seeds = _OPEN_FRAMES[0], list(self.tasks), [None] * len(self.tasks)
        else:
            rng = np.random.default_rng([seed, 2])
            frame = _OPEN_FRAMES[int(rng.integers(len(_OPEN_FRAMES)))]
            order = [self.tasks[i] for i in rng.permutation(len(self.tasks))]
            phrase_seeds = [int(s) for s in rng.integers(0, 2**31, size=len(order))]
        facts = [t.phrase(truth[t.name], seed=s) for t, s in zip(order, phrase_seeds)]
        return frame.format(facts=_natural_join(facts))
