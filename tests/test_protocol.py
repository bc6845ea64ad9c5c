"""The response parser never raises and reads realistic answers right; prompts are well formed."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adfm.geometry import ModelGrid
from adfm.protocol import (
    PROMPT_VERSIONS,
    ParsedResponse,
    attach_images,
    build_messages,
    format_response,
    get_prompt_version,
    parse_response,
    to_image_url_messages,
)

# ---- never raises ---------------------------------------------------------------------------

_FRAGMENTS = [
    "<think>", "</think>", "<rethink>", "</rethink>", "<answer>", "</answer>", "< think >", "</ANSWER>",
    "<think><think>", "yes", "no", "YES", "No.", "maybe", "```json\n", "```", "\n", " ", "[", "]", "{", "}",
    '{"bbox_2d": [', '"label": "scratch"}', ", ", "NaN", "Infinity", "-Infinity", "1e308", "-1e308", "1e309",
    "0", "-5", "12.5", "224", '[{"bbox_2d": [10, 20, 30, 40], "label": "x"}]', "[1, 2, 3, 4]", "[1,2,3]",
    '{"bbox_2d": "abc"}', '{"bbox": [1, 2, 3, 4]}', "[[1,2,3,4],[5,6,7,8]]", "true", "null", '"',
    "\u00e9\u0301", "\u202e", "\U0001f600", "\x00", "\ud7ff", "İ", "ß", "\\", "[" * 50, "{" * 50,
]

responses = st.one_of(
    st.text(max_size=300),
    st.lists(st.sampled_from(_FRAGMENTS), max_size=40).map("".join),
    st.lists(st.one_of(st.sampled_from(_FRAGMENTS), st.text(max_size=8)), max_size=30).map("".join),
    st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**30, 10**30)),
             min_size=0, max_size=6).map(lambda v: f'<think>[{{"bbox_2d": {v!r}}}]</think><answer>yes</answer>'),
)

_GRID = ModelGrid(orig_width=640, orig_height=480, width=224, height=168)


def _check(p: ParsedResponse) -> None:
    assert isinstance(p, ParsedResponse)
    assert p.decision in (True, False, None)
    assert isinstance(p.problems, list)
    assert len(p.boxes) == len(p.labels)
    for b in p.boxes:
        assert len(b) == 4 and b[0] < b[2] and b[1] < b[3]


@given(responses, st.sampled_from(sorted(PROMPT_VERSIONS)), st.booleans())
@settings(max_examples=10_000, deadline=None, suppress_health_check=list(HealthCheck))
def test_parser_never_raises_on_generated_strings(text, version, with_grid):
    grid = _GRID if with_grid else None
    p = parse_response(text, grid, version=version)
    _check(p)
    if grid is not None:
        for b in p.boxes:
            assert b[0] >= 0 and b[2] <= 640 and b[1] >= 0 and b[3] <= 480


@pytest.mark.parametrize(
    "text",
    [
        None, 42, b"<answer>yes</answer>", ["<answer>", "yes"],
        "x" * 1_000_000,
        "<think>" + "[" * 500_000 + "</think><answer>no</answer>",
        "<think>" + '[{"bbox_2d": [1, 2, 3, 4]}, ' * 40_000 + "</think><answer>yes</answer>",
        "</think>" * 100_000,
        "<think>" + "{" * 200_000,
        '<think>[{"bbox_2d": [1e308, 1e308, -1e308, -1e308]}]</think><answer>yes</answer>',
    ],
    ids=["none", "int", "bytes", "list", "1MB-x", "500k-brackets", "40k-boxes", "100k-close-tags",
         "200k-braces", "1e308-box"],
)
def test_parser_survives_hostile_inputs(text):
    _check(parse_response(text, _GRID))
    _check(parse_response(text))


# ---- realistic model outputs ----------------------------------------------------------------

GRID = ModelGrid(orig_width=448, orig_height=448, width=224, height=224)  # scale 2

# (text, version, decision, boxes in original pixels, format_ok)
REALISTIC = [
    (
        '<think>The washer surface shows a bright line near the rim. [{"bbox_2d": [10, 20, 50, 60], '
        '"label": "scratch"}]</think><rethink>The line is a real scratch. [{"bbox_2d": [12, 22, 48, 58], '
        '"label": "scratch"}]</rethink><answer>yes</answer>',
        "multi-stage-v1", True, [[24, 44, 96, 116]], True,
    ),
    (
        "<think>Uniform texture everywhere. []</think><rethink>Nothing to examine. []</rethink>"
        "<answer>no</answer>",
        "multi-stage-v1", False, [], True,
    ),
    (
        # rethink without a list: boxes come from think
        '<think>Candidate: [{"bbox_2d": [0, 0, 10, 10], "label": "spot"}]</think><rethink>It is a stain.'
        "</rethink><answer>yes</answer>",
        "multi-stage-v1", True, [[0, 0, 20, 20]], True,
    ),
    (
        # rethink discards the candidate: empty list wins
        '<think>[{"bbox_2d": [0, 0, 10, 10], "label": "spot"}]</think><rethink>Only a reflection. []'
        "</rethink><answer>no</answer>",
        "multi-stage-v1", False, [], True,
    ),
    (
        # corners reversed, out of the image: ordered and clipped
        '<think>[{"bbox_2d": [300, 200, 100, 100], "label": "crack"}]</think><rethink>ok</rethink>'
        "<answer>Yes</answer>",
        "multi-stage-v1", True, [[200, 200, 448, 400]], True,
    ),
    (
        # wrapped in a code fence: read, but not the trained format
        '```xml\n<think>[{"bbox_2d": [1, 1, 5, 5]}]</think><rethink>ok</rethink><answer>yes</answer>\n```',
        "multi-stage-v1", True, [[2, 2, 10, 10]], False,
    ),
    (
        # chatty answer: decision read, format broken
        "<think>[]</think><rethink>[]</rethink><answer>No, the part looks normal.</answer>",
        "multi-stage-v1", False, [], False,
    ),
    (
        # ambiguous answer
        "<think>[]</think><rethink>[]</rethink><answer>yes or no</answer>",
        "multi-stage-v1", None, [], False,
    ),
    (
        # missing answer: generation cut off
        '<think>[{"bbox_2d": [1, 1, 5, 5], "label": "spot"}]</think><rethink>The spot is',
        "multi-stage-v1", None, [[2, 2, 10, 10]], False,
    ),
    (
        # one-stage format
        '<think>A dark blob. [{"bbox_2d": [50, 50, 70, 80], "label": "spot"}]</think><answer>yes</answer>',
        "one-stage-v1", True, [[100, 100, 140, 160]], True,
    ),
    (
        # one-stage text under the multi-stage version: read, format not held
        '<think>[{"bbox_2d": [50, 50, 70, 80]}]</think><answer>yes</answer>',
        "multi-stage-v1", True, [[100, 100, 140, 160]], False,
    ),
    (
        # truncated JSON: the complete box is kept, the format is not
        '<think>[{"bbox_2d": [10, 10, 20, 20], "label": "a"}, {"bbox_2d": [30, 30, </think>'
        "<rethink>x</rethink><answer>yes</answer>",
        "multi-stage-v1", True, [[20, 20, 40, 40]], False,
    ),
    (
        # bare list of lists
        "<think>[[10, 10, 20, 20], [30, 30, 40, 40]]</think><rethink>y</rethink><answer>yes</answer>",
        "multi-stage-v1", True, [[20, 20, 40, 40], [60, 60, 80, 80]], True,
    ),
    (
        # NaN coordinate: box rejected, format broken
        '<think>[{"bbox_2d": [NaN, 1, 2, 3]}]</think><rethink>r</rethink><answer>yes</answer>',
        "multi-stage-v1", True, [], False,
    ),
    (
        # text outside the tags
        "Sure! <think>[]</think><rethink>[]</rethink><answer>no</answer> Hope this helps.",
        "multi-stage-v1", False, [], False,
    ),
    (
        # zero-area box dropped
        '<think>[{"bbox_2d": [5, 5, 5, 9]}]</think><rethink>r</rethink><answer>yes</answer>',
        "multi-stage-v1", True, [], True,
    ),
    ("", "multi-stage-v1", None, [], False),
]


@pytest.mark.parametrize(
    ("text", "version", "decision", "boxes", "format_ok"), REALISTIC, ids=[f"case{i}" for i in range(len(REALISTIC))]
)
def test_realistic_outputs(text, version, decision, boxes, format_ok):
    p = parse_response(text, GRID, version=version)
    assert p.decision is decision
    np.testing.assert_allclose(np.asarray(p.boxes).reshape(-1, 4), np.asarray(boxes, float).reshape(-1, 4))
    assert p.format_ok is format_ok, p.problems
    if not format_ok:
        assert p.problems


def test_sections_and_labels_are_returned():
    text = (
        '<think> scan [{"bbox_2d": [1, 2, 3, 4], "label": "scratch"}] </think>'
        '<rethink> look [{"bbox_2d": [1, 2, 3, 4], "label": "deep scratch"}]</rethink><answer> yes </answer>'
    )
    p = parse_response(text)
    assert p.think.startswith("scan") and p.rethink.startswith("look") and p.answer == "yes"
    assert p.labels == ["deep scratch"] and p.boxes == [[1, 2, 3, 4]]
    assert p.label == "anomalous"


def test_format_response_round_trips_through_parser():
    for version in PROMPT_VERSIONS:
        for decision, boxes in [(True, [[10, 12, 40, 44], [50, 50, 60, 70]]), (False, [])]:
            text = format_response(decision, boxes, version=version)
            p = parse_response(text, version=version)
            assert p.format_ok, p.problems
            assert p.decision is decision
            assert p.boxes == boxes


def test_unknown_version_is_reported_not_raised():
    p = parse_response("<think>[]</think><rethink>[]</rethink><answer>no</answer>", version="v99")
    assert p.decision is False
    assert any("unknown prompt version" in s for s in p.problems)


# ---- prompts --------------------------------------------------------------------------------


@pytest.mark.parametrize("version", sorted(PROMPT_VERSIONS))
@pytest.mark.parametrize("reference", [False, True])
def test_build_messages(version, reference):
    msgs = build_messages(version, product="washer", reference=reference)
    assert [m["role"] for m in msgs] == ["system", "user"]
    blocks = msgs[1]["content"]
    n_images = sum(b["type"] == "image" for b in blocks)
    assert n_images == (2 if reference else 1)
    text = blocks[-1]["text"]
    assert "washer" in text and "bbox_2d" in text and "<answer>" in text
    assert ("<rethink>" in text) == ("rethink" in get_prompt_version(version).sections)
    assert ("second image" in text) == reference
    json.dumps(msgs)  # serialisable as written into datasets and manifests


def test_fill_images():
    msgs = build_messages(reference=True)
    filled = attach_images(msgs, ["REF", "QUERY"])
    imgs = [b["image"] for b in filled[1]["content"] if b["type"] == "image"]
    assert imgs == ["REF", "QUERY"]
    urls = to_image_url_messages(msgs, ["data:a", "data:b"])
    assert [b["image_url"]["url"] for b in urls[1]["content"] if b["type"] == "image_url"] == ["data:a", "data:b"]
    with pytest.raises(ValueError, match="1 images given for 2"):
        attach_images(msgs, ["only one"])
    with pytest.raises(ValueError, match="unknown prompt version"):
        build_messages("nope")


def test_proposals_are_the_bbox_2d_objects_of_think():
    text = ('<think>Region [10, 20, 50, 60] then [{"bbox_2d":[10,20,50,60]}, {"bbox_2d": [1, 2, 3]}]</think>'
            '<rethink>[{"bbox_2d": [12, 22, 48, 58]}]</rethink><answer>yes</answer>')
    p = parse_response(text, GRID)
    assert p.proposed_count == 2  # the prose list is not a proposal; the malformed object is
    assert p.proposed_boxes == [[20, 40, 100, 120]]  # only the valid one can be matched
    assert p.boxes_from == "rethink" and p.boxes == [[24, 44, 96, 116]]
    one = "one-stage-v1"
    assert parse_response("<think>[[1, 2, 3, 4]]</think><answer>no</answer>", version=one).boxes_from == "think"
    assert parse_response("<think>none</think><answer>no</answer>", version=one).boxes_from is None
