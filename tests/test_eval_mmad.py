"""MMAD questions from split records, the question prompt, and MMAD's way of reading an answer."""

from __future__ import annotations

import pytest

from adfm.protocol import attach_images, to_image_url_messages
from adfm.trainer.data.records import Sample
from adfm.trainer.evaluation.mmad import (
    build_question_messages,
    canonical_subtask,
    mmad_questions,
    parse_choice,
)

OPTIONS = {"A": "Yes.", "B": "No."}


@pytest.mark.parametrize(
    ("text", "letter", "method"),
    [
        ("B", "B", "letter"),
        ("Answer: A.", "A", "letter"),
        ("It could be B. Final answer: C", "C", "letter"),  # the last standalone letter wins
        ("<think>A or B</think><answer>D</answer>", "D", "letter"),
        ("(E)", "E", "letter"),
        ("ABBA", None, None),  # no standalone letter, and no options to fall back on
    ],
)
def test_parse_choice_reads_the_last_standalone_letter(text, letter, method):
    got = parse_choice(text)
    assert (got.letter, got.method) == (letter, method)


def test_parse_choice_falls_back_to_the_closest_option_text():
    assert parse_choice("no", OPTIONS).letter == "B"
    assert parse_choice("no", OPTIONS).method == "option_text"
    assert parse_choice("yes, there is one", OPTIONS).letter == "A"
    # lower-case letters are words, not choices
    assert parse_choice("a", {"A": "scratch", "B": "a"}).method == "option_text"


@pytest.mark.parametrize("text", ["", "   ", None, 17])
def test_parse_choice_never_guesses_from_nothing(text):
    assert parse_choice(text, OPTIONS).letter is None


def _sample(conversation) -> Sample:
    return Sample(id="mmad/DS-MVTec/bottle/test/good/000", image="/x.png", dataset="mmad",
                  category="DS-MVTec/bottle", split="test", label="normal", extra={"conversation": conversation})


def test_questions_are_read_and_bad_entries_named():
    conv = [
        {"Question": "Is there any defect?", "Answer": "B", "Options": OPTIONS, "type": "Anomaly Detection"},
        {"Question": "What is its shape?", "Answer": "A", "Options": {"A": "round", "B": "square"},
         "type": "Object Details"},
        {"Question": "Which?", "Answer": "C", "Options": OPTIONS, "type": "Defect Classification"},
        {"Question": "", "Answer": "A", "Options": OPTIONS, "type": "Defect Analysis"},
        "not a question",
    ]
    questions, problems = mmad_questions(_sample(conv))
    assert [q.key for q in questions] == ["mmad/0", "mmad/1"]
    assert questions[1].subtask == "Object Analysis"
    assert len(problems) == 3
    assert "extra.conversation[2].Answer" in problems[0] and "'C'" in problems[0]
    assert "extra.conversation[3].Question" in problems[1]
    assert "extra.conversation[4]" in problems[2] and "mmad/DS-MVTec/bottle/test/good/000" in problems[2]


def test_canonical_subtask_folds_object_questions():
    assert canonical_subtask("Object Structure") == "Object Analysis"
    assert canonical_subtask(" Defect Localization ") == "Defect Localization"


def test_question_messages_have_image_slots_in_order():
    q = mmad_questions(_sample([{"Question": "Is there any defect?", "Answer": "B", "Options": OPTIONS,
                                 "type": "Anomaly Detection"}]))[0][0]
    with_ref = build_question_messages(q, reference=True)
    blocks = with_ref[0]["content"]
    assert [b["type"] for b in blocks] == ["image", "image", "text"]
    text = blocks[-1]["text"]
    assert "Is there any defect?" in text and "A. Yes.\nB. No." in text and "template" in text
    assert "template" not in build_question_messages(q, reference=False)[0]["content"][-1]["text"]
    # both backends' slot fillers accept them
    assert attach_images(with_ref, ["ref", "query"])[0]["content"][1]["image"] == "query"
    filled = to_image_url_messages(with_ref, ["u1", "u2"])
    assert filled[0]["content"][0]["image_url"]["url"] == "u1"
