"""MMAD's multiple-choice subtasks: questions from the split, the question prompt, MMAD's answer reading.

MMAD samples carry the benchmark's questions in `Sample.extra["conversation"]` (written by the
MMAD adapter in `adfm.trainer.data.layouts.mmad`): a list of {Question, Answer, Options, type}.
Scoring follows MMAD's own summary script:
- each question is asked on its own, options listed as `A. text` lines, the normal template (the
  sample's reference) shown before the query image when the protocol uses one;
- the answer is the last standalone capital letter A–E in the response; when there is none, the
  option whose text is closest to the response (difflib) — MMAD's fallback;
- question types "Object Structure" and "Object Details" count as "Object Analysis";
- the "Anomaly Detection" subtask scores balanced accuracy, (normal acc + anomalous acc) / 2, an
  image being normal when its path has a `good` folder (the adapter's `Sample.label`).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any, Literal

from ..data.records import Sample

ANOMALY_DETECTION = "Anomaly Detection"
#: The subtasks in MMAD's table order.
SUBTASKS = (
    ANOMALY_DETECTION,
    "Defect Classification",
    "Defect Localization",
    "Defect Description",
    "Defect Analysis",
    "Object Classification",
    "Object Analysis",
)
#: Question types MMAD folds into another subtask when it scores.
SUBTASK_ALIASES = {"Object Structure": "Object Analysis", "Object Details": "Object Analysis"}
LETTERS = ("A", "B", "C", "D", "E")
#: Question keys in the responses file: `mmad/<index in the conversation>`.
QUESTION_PREFIX = "mmad/"

_LETTER_RE = re.compile(r"\b([A-E])\b")

_INSTRUCTION = (
    "You are an industrial inspector examining products in images. Judge whether the query image "
    "shows a defect and answer the question about it. Answer with the letter of the correct option."
)
_REFERENCE_NOTE = "The first image shows a normal sample of this product, a template to compare with. "
_QUERY_NOTE = "The last image is the query image."


class MmadFormatError(ValueError):
    """A question entry of a sample that cannot be asked; the message names the sample and field."""


def canonical_subtask(question_type: str) -> str:
    """MMAD's scoring name for a question type (Object Structure/Details → Object Analysis)."""
    name = question_type.strip()
    return SUBTASK_ALIASES.get(name, name)


@dataclass(frozen=True)
class MmadQuestion:
    """One multiple-choice question of one image."""

    index: int
    subtask: str
    question: str
    options: dict[str, str]
    answer: str

    @property
    def key(self) -> str:
        return f"{QUESTION_PREFIX}{self.index}"

    def text(self) -> str:
        """The question and its options, one `A. text` line each, as MMAD lists them."""
        lines = [f"Question: {self.question.strip()}"]
        lines += [f"{letter}. {value}" for letter, value in self.options.items()]
        return "\n".join(lines)


def is_mmad_sample(sample: Sample) -> bool:
    """A sample that carries MMAD questions."""
    return bool(sample.extra.get("conversation"))


def _question(sample: Sample, index: int, entry: Any) -> MmadQuestion:
    where = f"sample {sample.id!r}: extra.conversation[{index}]"
    if not isinstance(entry, dict):
        raise MmadFormatError(f"{where}: expected an object, got {type(entry).__name__}")
    question = entry.get("Question")
    if not isinstance(question, str) or not question.strip():
        raise MmadFormatError(f"{where}.Question: missing or empty (got {question!r})")
    options = entry.get("Options")
    if not isinstance(options, dict) or not options:
        raise MmadFormatError(f"{where}.Options: expected a non-empty object of letter → text, got {options!r}")
    bad = [k for k in options if k not in LETTERS]
    if bad:
        raise MmadFormatError(f"{where}.Options: option keys must be letters A–E, got {bad}")
    answer = entry.get("Answer")
    if answer not in options:
        raise MmadFormatError(f"{where}.Answer: {answer!r} is not one of the options {sorted(options)}")
    qtype = entry.get("type")
    if not isinstance(qtype, str) or not qtype.strip():
        raise MmadFormatError(f"{where}.type: missing question type (got {qtype!r})")
    return MmadQuestion(
        index=index,
        subtask=canonical_subtask(qtype),
        question=question,
        options={str(k): str(v) for k, v in options.items()},
        answer=str(answer),
    )


def mmad_questions(sample: Sample) -> tuple[list[MmadQuestion], list[str]]:
    """The sample's questions, and a problem line for each entry that cannot be asked (skipped)."""
    conversation = sample.extra.get("conversation") or []
    if not isinstance(conversation, list):
        return [], [f"sample {sample.id!r}: extra.conversation must be a list, got {type(conversation).__name__}"]
    questions: list[MmadQuestion] = []
    problems: list[str] = []
    for i, entry in enumerate(conversation):
        try:
            questions.append(_question(sample, i, entry))
        except MmadFormatError as exc:
            problems.append(str(exc))
    return questions, problems


def build_question_messages(question: MmadQuestion, reference: bool) -> list[dict[str, Any]]:
    """Chat messages for one MMAD question, with `{"type": "image"}` slots (reference, then query).

    Same conversational format as `adfm.protocol.build_messages`, so `attach_images` and
    `to_image_url_messages` fill the slots for either backend.
    """
    slots = [{"type": "image"} for _ in range(2 if reference else 1)]
    text = "\n".join(
        [_INSTRUCTION, (_REFERENCE_NOTE if reference else "") + _QUERY_NOTE, question.text()]
    )
    return [{"role": "user", "content": [*slots, {"type": "text", "text": text}]}]


ChoiceMethod = Literal["letter", "option_text"]


@dataclass(frozen=True)
class Choice:
    """The option a response picked, and how it was read (None when nothing could be read)."""

    letter: str | None
    method: ChoiceMethod | None


def parse_choice(text: object, options: dict[str, str] | None = None) -> Choice:
    """Read a multiple-choice answer as MMAD does; never raises.

    The last standalone capital letter A–E wins. Without one, the option whose text is closest to
    the response (difflib ratio) — MMAD's fallback — when the response has any text at all.
    """
    if not isinstance(text, str):
        return Choice(None, None)
    letters = _LETTER_RE.findall(text)
    if letters:
        return Choice(letters[-1], "letter")
    if options and text.strip():
        values = list(options.values())
        close = difflib.get_close_matches(text, values, n=1, cutoff=0.0)
        if close:
            letter = next(k for k, v in options.items() if v == close[0])
            return Choice(letter, "option_text")
    return Choice(None, None)
