"""AD-FM rewards against hand-computed values (Eqs. 4–6), called the way TRL calls them."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adfm.protocol import format_response
from adfm.trainer import rewards
from adfm.trainer.rewards import (
    classification_reward,
    count_localization_reward,
    count_reward,
    focus_reward,
    format_reward,
    localization_reward,
    localization_score,
    localization_terms,
    random_reward,
)

GT = [[10.0, 10.0, 30.0, 30.0]]  # one 20×20 defect


# (pred boxes, gt boxes, label, alpha, expected r_loc) — each value worked out by hand below.
LOC_CASES = [
    # anomalous, perfect single box: GIoU 1 + α·r_count(1,1)=1
    ([[10, 10, 30, 30]], GT, "anomalous", 1.0, 2.0),
    # anomalous, half-overlapping box [20,10,40,30]: inter 200, union 600, IoU 1/3, enclosing = union → GIoU 1/3
    ([[20, 10, 40, 30]], GT, "anomalous", 1.0, 1 / 3 + 1.0),
    # anomalous, disjoint box [40,10,60,30]: IoU 0, enclosing 50×20=1000, union 800 → GIoU −0.2
    ([[40, 10, 60, 30]], GT, "anomalous", 1.0, -0.2 + 1.0),
    # anomalous, no box: GIoU term 0, r_count(0,1)=0.5
    ([], GT, "anomalous", 1.0, 0.5),
    # anomalous, perfect box + a far extra box: matched GIoU 1 (mean over 1 pair), r_count(2,1)=0.5
    ([[10, 10, 30, 30], [100, 100, 120, 120]], GT, "anomalous", 1.0, 1.0 + 0.5),
    # anomalous, three boxes for one defect: r_count(3,1) = −0.1
    ([[10, 10, 30, 30], [50, 50, 60, 60], [70, 70, 80, 80]], GT, "anomalous", 1.0, 1.0 - 0.1),
    # anomalous, two gt defects both found exactly: mean GIoU 1, r_count(2,2)=1
    ([[50, 50, 70, 70], [10, 10, 30, 30]], [[10, 10, 30, 30], [50, 50, 70, 70]], "anomalous", 1.0, 2.0),
    # anomalous, two gt, one exact + one disjoint 10×10 box [80,80,90,90] vs [50,50,70,70]:
    #   union 500, enclosing 40×40=1600 → GIoU −1100/1600 = −0.6875; mean (1 − 0.6875)/2; r_count 1
    ([[10, 10, 30, 30], [80, 80, 90, 90]], [[10, 10, 30, 30], [50, 50, 70, 70]], "anomalous", 1.0,
     (1 - 0.6875) / 2 + 1.0),
    # α scales only the count term: perfect box, α=0.5 → 1 + 0.5
    ([[10, 10, 30, 30]], GT, "anomalous", 0.5, 1.5),
    # α with an off-by-one count: no box, α=2 → 0 + 2·0.5
    ([], GT, "anomalous", 2.0, 1.0),
    # normal, no box: r_focus(0) = 0
    ([], [], "normal", 1.0, 0.0),
    # normal, one box: r_focus(1) = 0.5 (α does not apply)
    ([[5, 5, 15, 15]], [], "normal", 3.0, 0.5),
    # normal, two boxes: r_focus(2) = −0.1
    ([[5, 5, 15, 15], [20, 20, 25, 25]], [], "normal", 1.0, -0.1),
    # label given as a bool works the same: True = anomalous
    ([[10, 10, 30, 30]], GT, True, 1.0, 2.0),
]


@pytest.mark.parametrize(("pred", "gt", "label", "alpha", "expected"), LOC_CASES)
def test_localization_score_hand_computed(pred, gt, label, alpha, expected):
    assert localization_score(pred, gt, label, alpha) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(("m", "n", "expected"), [(0, 0, 1.0), (1, 1, 1.0), (2, 1, 0.5), (0, 1, 0.5), (3, 1, -0.1),
                                                  (0, 4, -0.1), (5, 5, 1.0)])
def test_count_reward(m, n, expected):
    assert count_reward(m, n) == expected


@pytest.mark.parametrize(("m", "expected"), [(0, 0.0), (1, 0.5), (2, -0.1), (7, -0.1)])
def test_focus_reward(m, expected):
    assert focus_reward(m) == expected


def test_focus_reward_rejects_negative_count():
    with pytest.raises(ValueError, match="≥ 0"):
        focus_reward(-1)


def test_terms_split_giou_and_count():
    t = localization_terms([[20, 10, 40, 30]], GT, "anomalous", alpha=2.0)
    assert t.giou == pytest.approx(1 / 3)
    assert t.count == pytest.approx(2.0)
    assert t.matched == 1
    assert t.total == pytest.approx(1 / 3 + 2.0)
    no_giou = localization_terms([[20, 10, 40, 30]], GT, "anomalous", alpha=2.0, use_giou=False)
    assert no_giou.giou == 0.0 and no_giou.total == pytest.approx(2.0)


def test_unknown_label_is_an_error():
    with pytest.raises(ValueError, match="label must be"):
        localization_score([], GT, "defective")


box = st.tuples(
    st.floats(0, 500, allow_nan=False), st.floats(0, 500, allow_nan=False),
    st.floats(0, 500, allow_nan=False), st.floats(0, 500, allow_nan=False),
).map(lambda b: [min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3])])


@settings(max_examples=200, deadline=None)
@given(
    pred=st.lists(box, max_size=6),
    gt=st.lists(box, max_size=4),
    anomalous=st.booleans(),
    alpha=st.floats(0, 5, allow_nan=False),
)
def test_localization_score_is_bounded(pred, gt, anomalous, alpha):
    score = localization_score(pred, gt, anomalous, alpha)
    assert math.isfinite(score)
    assert score <= 1 + alpha + 1e-9
    assert score >= -1 - 0.1 * alpha - 1e-9  # GIoU ≥ −1, r_count ≥ −0.1


# ---- called as TRL calls them: completions + dataset columns ----------------------------------

# A 400×300 original seen on a 280×210 grid: grid boxes scale by 0.7.
COLUMNS = {"orig_width": 400, "orig_height": 300, "grid_width": 280, "grid_height": 210,
           "prompt_version": "multi-stage-v1"}


def _cols(n: int, label: str, gt: list | None) -> dict:
    return {"label": [label] * n, "gt_boxes": [gt] * n, **{k: [v] * n for k, v in COLUMNS.items()}}


def _answer(decision: bool, grid_boxes: list) -> list[dict]:
    """A conversational completion as TRL passes it."""
    return [{"role": "assistant", "content": format_response(decision, grid_boxes)}]


def test_spurious_correctness_scores_below_real_insight():
    """Paper's motivating case: right answer + wrong region must score below right answer + right region."""
    gt = [[100.0, 100.0, 200.0, 200.0]]  # original pixels → grid [70, 70, 140, 140]
    right_region = _answer(True, [[70, 70, 140, 140]])
    wrong_region = _answer(True, [[180, 150, 270, 200]])  # → original ≈ [257,214,386,286]: disjoint
    completions = [right_region, wrong_region]
    cols = _cols(2, "anomalous", gt)
    cls = classification_reward(completions, **cols)
    loc = localization_reward(completions, **cols)
    fmt = format_reward(completions, **cols)
    assert cls == [1.0, 1.0]
    assert fmt == [1.0, 1.0]
    assert loc[0] == pytest.approx(2.0)  # exact box mapped back to original pixels
    assert loc[1] < 1.0  # negative GIoU + count 1
    total = [c + lo + f for c, lo, f in zip(cls, loc, fmt, strict=True)]
    assert total[1] < total[0]
    # the binary reward cannot tell them apart: that is what r_loc adds
    assert cls[0] == cls[1]


def test_boxes_are_compared_in_original_pixels():
    gt = [[100.0, 100.0, 200.0, 200.0]]
    on_grid_coords_as_if_original = _answer(True, [[100, 100, 200, 200]])  # wrong: these are grid pixels
    loc = localization_reward([on_grid_coords_as_if_original], **_cols(1, "anomalous", gt))[0]
    # grid [100..200] → original [142.9..285.7]: IoU with [100..200] is small, GIoU < 1
    assert loc < 1.0  # it would be exactly 2.0 if the grid boxes were read as original pixels


def test_classification_reward_cases():
    completions = [
        format_response(True, [[1, 1, 10, 10]]),  # says yes on an anomalous sample
        format_response(False, []),  # says no
        "<think>[]</think><rethink>[]</rethink><answer>maybe</answer>",  # unreadable answer
        "",  # empty
        "I think yes, it is defective",  # no tags: no <answer>, so no decision
    ]
    assert classification_reward(completions, **_cols(5, "anomalous", GT)) == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert classification_reward(completions[:2], **_cols(2, "normal", [])) == [0.0, 1.0]


def test_format_reward_follows_prompt_version():
    multi = format_response(False, [], version="multi-stage-v1")
    one = format_response(False, [], version="one-stage-v1")
    cols = _cols(2, "normal", [])
    assert format_reward([multi, one], **cols) == [1.0, 0.0]
    cols["prompt_version"] = ["one-stage-v1"] * 2
    assert format_reward([multi, one], **cols) == [0.0, 1.0]
    assert format_reward(["<answer>no</answer> trailing", None], **_cols(2, "normal", [])) == [0.0, 0.0]


def test_count_localization_reward_ignores_giou():
    gt = [[100.0, 100.0, 200.0, 200.0]]
    wrong_place = _answer(True, [[200, 150, 270, 200]])
    cols = _cols(1, "anomalous", gt)
    assert count_localization_reward([wrong_place], **cols) == [1.0]
    assert count_localization_reward([wrong_place], alpha=0.5, **cols) == [0.5]
    assert localization_reward([wrong_place], **cols)[0] < 1.0


def test_localization_reward_logs_its_terms():
    logged: dict[str, float] = {}
    cols = _cols(2, "anomalous", [[100.0, 100.0, 200.0, 200.0]])
    localization_reward([_answer(True, [[70, 70, 140, 140]]), _answer(True, [])],
                        log_metric=lambda k, v: logged.__setitem__(k, v), **cols)
    assert logged["localization/giou"] == pytest.approx(0.5)  # (1 + 0) / 2
    assert logged["localization/count"] == pytest.approx(0.75)  # (1 + 0.5) / 2
    assert logged["localization/boxes"] == pytest.approx(0.5)


def test_anomalous_sample_without_boxes_is_a_clear_error():
    with pytest.raises(ValueError, match="without ground-truth boxes"):
        localization_reward([_answer(True, [])], **_cols(1, "anomalous", None))


def test_missing_column_names_it():
    with pytest.raises(KeyError, match="gt_boxes"):
        localization_reward(["x"], label=["anomalous"])
    with pytest.raises(ValueError, match="2 values for 1"):
        classification_reward(["x"], label=["normal", "normal"])


def test_random_reward_is_seeded_zero_mean_noise():
    class State:
        global_step = 3

    a = random_reward(["x"] * 4000, sigma=0.5, seed=7, trainer_state=State())
    b = random_reward(["x"] * 4000, sigma=0.5, seed=7, trainer_state=State())
    c = random_reward(["x"] * 4000, sigma=0.5, seed=8, trainer_state=State())
    assert a == b and a != c
    mean = sum(a) / len(a)
    std = (sum((v - mean) ** 2 for v in a) / len(a)) ** 0.5
    assert abs(mean) < 0.05
    assert std == pytest.approx(0.5, rel=0.1)
    State.global_step = 4
    assert random_reward(["x"] * 10, sigma=0.5, seed=7, trainer_state=State()) != a[:10]
    assert random_reward(["x"] * 3, sigma=0.0) == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="sigma"):
        random_reward(["x"], sigma=-1)


def test_completion_text_accepts_trl_shapes():
    assert rewards.completion_text("abc") == "abc"
    assert rewards.completion_text([{"role": "assistant", "content": "abc"}]) == "abc"
    assert rewards.completion_text([{"role": "assistant", "content": [{"type": "text", "text": "a"},
                                                                       {"type": "text", "text": "b"}]}]) == "ab"
    assert rewards.completion_text(None) == ""


# ---- what counts as a box: m = the bbox_2d objects of <think> ---------------------------------

# (completion text, label, gt in original pixels, expected m, expected r_loc); COLUMNS' grid scales
# grid pixels by 1/0.7 into original pixels, so grid [70, 70, 140, 140] is original [100, 100, 200, 200].
M_CASES = [
    # the case: a prose coordinate list is not a box; one bbox_2d object → m=1, r_count(1,1)=1,
    # the box [10,20,50,60]/0.7 overlaps nothing of gt [100,100,200,200]: IoU 0, enclosing
    # [14.3..200]×[28.6..200] = 185.7×171.4 = 31837, union 57.1·57.1 + 10000 = 13265 → GIoU −0.5833
    ('<think>Region [10, 20, 50, 60] then [{"bbox_2d":[10,20,50,60]}]</think><rethink>r []</rethink>'
     "<answer>yes</answer>", "anomalous", [[100.0, 100.0, 200.0, 200.0]], 1, None),
    # exact box + prose coordinates: m=1 → GIoU 1 + r_count 1
    ('<think>near [70, 70, 140, 140] [{"bbox_2d": [70, 70, 140, 140]}]</think><rethink>r</rethink>'
     "<answer>yes</answer>", "anomalous", [[100.0, 100.0, 200.0, 200.0]], 1, 2.0),
    # a bare coordinate list alone proposes nothing: m=0 → GIoU 0 + r_count(0,1) = 0.5
    ("<think>[[70, 70, 140, 140]]</think><rethink>r</rethink><answer>yes</answer>",
     "anomalous", [[100.0, 100.0, 200.0, 200.0]], 0, 0.5),
    # <rethink> boxes are not proposals: m=0 although rethink holds one box → 0.5
    ('<think>[]</think><rethink>[{"bbox_2d": [70, 70, 140, 140]}]</rethink><answer>yes</answer>',
     "anomalous", [[100.0, 100.0, 200.0, 200.0]], 0, 0.5),
    # a zero-area box counts in m and never matches: exact box + [5,5,5,9] → m=2, GIoU 1 (the one
    # matched pair), r_count(2,1)=0.5 → 1.5
    ('<think>[{"bbox_2d": [70, 70, 140, 140]}, {"bbox_2d": [5, 5, 5, 9]}]</think><rethink>r</rethink>'
     "<answer>yes</answer>", "anomalous", [[100.0, 100.0, 200.0, 200.0]], 2, 1.5),
    # an off-image box (clipped to nothing) alone: m=1, no match → GIoU 0 + r_count(1,1) = 1
    ('<think>[{"bbox_2d": [900, 900, 950, 990]}]</think><rethink>r</rethink><answer>yes</answer>',
     "anomalous", [[100.0, 100.0, 200.0, 200.0]], 1, 1.0),
    # a NaN box on a normal part still counts: r_focus(1) = 0.5
    ('<think>[{"bbox_2d": [NaN, 1, 2, 3]}]</think><rethink>r</rethink><answer>no</answer>',
     "normal", None, 1, 0.5),
    # prose coordinates on a normal part are not a proposal: r_focus(0) = 0
    ("<think>the rim at [10, 20, 50, 60] is clean []</think><rethink>r []</rethink><answer>no</answer>",
     "normal", None, 0, 0.0),
]


@pytest.mark.parametrize(("text", "label", "gt", "m", "expected"), M_CASES, ids=[f"m{i}" for i in range(len(M_CASES))])
def test_box_count_is_the_bbox_2d_objects_of_think(text, label, gt, m, expected):
    parsed = rewards.parse_completions([text], **_cols(1, label, gt))[0]
    assert parsed.proposed_count == m
    loc = localization_reward([text], **_cols(1, label, gt))[0]
    if expected is None:  # the case: only the count term is checked exactly
        terms = localization_terms(parsed.proposed_boxes, gt, label, m=parsed.proposed_count)
        assert terms.count == 1.0 and terms.matched == 1
        assert loc == pytest.approx(terms.total)
        assert terms.giou == pytest.approx((13265.3 - 31836.7) / 31836.7, abs=1e-3)
    else:
        assert loc == pytest.approx(expected, abs=1e-9)


def test_count_below_the_valid_boxes_is_an_error():
    with pytest.raises(ValueError, match="m=0"):
        localization_terms([[1, 1, 2, 2]], GT, "anomalous", m=0)
