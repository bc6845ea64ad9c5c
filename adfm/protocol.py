"""The one contract between the model and everything that reads it: prompts and the response parser.

Training rewards, evaluation and the appliance all build prompts and read answers through this
module, so what the model was trained to say is exactly what the line reads.

Answer format of `multi-stage-v1` (AD-FM's three stages)::

    <think>scan … [{"bbox_2d": [x1, y1, x2, y2], "label": "scratch"}]</think>
    <rethink>examine each region … [{"bbox_2d": [...], "label": "..."}]</rethink>
    <answer>yes</answer>

`one-stage-v1` drops the `<rethink>` stage. Box coordinates are absolute pixels of the image the
model saw (the model grid); `parse_response(..., grid=...)` maps them to original-image pixels.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from .geometry import ModelGrid

DEFAULT_PROMPT_VERSION = "multi-stage-v1"

#: Qwen2.5-VL's vision special tokens. An answer never contains them; a sampled one would break the
#: rope index and the image features, so every generator (training, evaluation, the line) suppresses them.
VISION_SPECIAL_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")

#: Boxes are searched in at most this many characters of a section, and at most this many
#: JSON candidates are tried, so a pathological 1 MB answer costs milliseconds, not minutes.
MAX_BOX_SECTION_CHARS = 65_536
MAX_JSON_CANDIDATES = 256
MAX_BOXES = 64
MAX_LABEL_CHARS = 200

_SYSTEM = (
    "You are a meticulous industrial visual inspector. You look at photographs of manufactured "
    "parts and decide whether each part has a defect."
)

_BOX_FORMAT = (
    'a JSON list [{{"bbox_2d": [x1, y1, x2, y2], "label": "short description"}}] in pixel '
    "coordinates of {target}, or [] if there is none"
)

_MULTI_STAGE = (
    "Inspect {subject} for defects such as scratches, spots, cracks, contamination, deformation "
    "or missing pieces.\n"
    "1. Inside <think></think>, scan the whole part and propose every region that could be a "
    "defect, as " + _BOX_FORMAT + ".\n"
    "2. Inside <rethink></rethink>, examine each proposed region closely, say whether it is a real "
    "defect or normal variation, and end with the confirmed defect regions as " + _BOX_FORMAT + ".\n"
    "3. Inside <answer></answer>, write exactly yes if the part is defective or no if it is normal."
)

_ONE_STAGE = (
    "Inspect {subject} for defects such as scratches, spots, cracks, contamination, deformation "
    "or missing pieces.\n"
    "1. Inside <think></think>, reason about the part and end with the defect regions as "
    + _BOX_FORMAT
    + ".\n"
    "2. Inside <answer></answer>, write exactly yes if the part is defective or no if it is normal."
)

_REFERENCE_PREAMBLE = (
    "The first image shows a normal, defect-free {product} for reference. The second image shows "
    "the part to inspect.\n"
)


@dataclass(frozen=True)
class PromptVersion:
    """A named prompt: its instruction text and the answer sections it demands, in order."""

    name: str
    sections: tuple[str, ...]
    instruction: str

    def user_text(self, product: str | None = None, reference: bool = False) -> str:
        noun = product.strip() if product and product.strip() else "part"
        if reference:
            return _REFERENCE_PREAMBLE.format(product=noun) + self.instruction.format(
                subject=f"the {noun} in the second image", target="the second image"
            )
        return self.instruction.format(subject=f"the {noun} in this image", target="the image")

    @property
    def boxes_from(self) -> tuple[str, ...]:
        """Sections whose box list is the prediction, most authoritative first."""
        return tuple(s for s in ("rethink", "think") if s in self.sections)


PROMPT_VERSIONS: dict[str, PromptVersion] = {
    "multi-stage-v1": PromptVersion("multi-stage-v1", ("think", "rethink", "answer"), _MULTI_STAGE),
    "one-stage-v1": PromptVersion("one-stage-v1", ("think", "answer"), _ONE_STAGE),
}


def get_prompt_version(name: str) -> PromptVersion:
    """Look up a prompt version by name; a clear error lists the known ones."""
    try:
        return PROMPT_VERSIONS[name]
    except KeyError:
        known = ", ".join(sorted(PROMPT_VERSIONS))
        raise ValueError(f"unknown prompt version {name!r}; known versions: {known}") from None


def build_messages(
    version: str = DEFAULT_PROMPT_VERSION,
    *,
    product: str | None = None,
    reference: bool = False,
) -> list[dict[str, Any]]:
    """Chat messages for one query, in the HF/TRL conversational format.

    Image slots are `{"type": "image"}` blocks, in order: the normal reference (when `reference`),
    then the query. `attach_images` or `to_image_url_messages` fill them for a backend.
    """
    pv = get_prompt_version(version)
    images = [{"type": "image"}] * (2 if reference else 1)
    # "\n" in the system text and the order of blocks are part of the trained format.
    return [
        {"role": "system", "content": [{"type": "text", "text": _SYSTEM}]},
        {
            "role": "user",
            "content": [dict(b) for b in images]
            + [{"type": "text", "text": pv.user_text(product, reference)}],
        },
    ]


def prompt_text(version: str = DEFAULT_PROMPT_VERSION, *, product: str | None = None, reference: bool = False) -> str:
    """All the text of an inspection prompt (system + user), without images or chat template:
    what sizing a context needs to know."""
    return _SYSTEM + get_prompt_version(version).user_text(product, reference)


def _fill_images(messages: list[dict[str, Any]], blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    slots = sum(
        1
        for msg in messages
        if isinstance(msg["content"], list)
        for block in msg["content"]
        if block.get("type") == "image"
    )
    if slots != len(blocks):
        raise ValueError(f"{len(blocks)} images given for {slots} image slots")
    it = iter(blocks)
    out = []
    for msg in messages:
        content = msg["content"]
        if isinstance(content, list):
            content = [next(it) if b.get("type") == "image" else dict(b) for b in content]
        out.append({**msg, "content": content})
    return out


def attach_images(messages: list[dict[str, Any]], images: list[Any]) -> list[dict[str, Any]]:
    """Fill image slots with images, HF style (`{"type": "image", "image": img}`)."""
    return _fill_images(messages, [{"type": "image", "image": img} for img in images])


def to_image_url_messages(messages: list[dict[str, Any]], urls: list[str]) -> list[dict[str, Any]]:
    """Fill image slots with URLs (e.g. `data:image/png;base64,…`), OpenAI/llama.cpp style."""
    return _fill_images(messages, [{"type": "image_url", "image_url": {"url": u}} for u in urls])


# --------------------------------------------------------------------------------------------
# Response parsing
# --------------------------------------------------------------------------------------------

_TAG_RE = re.compile(r"<\s*(/?)\s*(think|rethink|answer)\s*>", re.IGNORECASE)
_JSON_START_RE = re.compile(r"[\[{]")
_FENCE_RE = re.compile(r"```[A-Za-z0-9_-]*")
_YES_NO_RE = re.compile(r"\b(yes|no)\b", re.IGNORECASE)
_BOX_KEYS = ("bbox_2d", "bbox", "box")
_DECODER = json.JSONDecoder()


@dataclass(frozen=True)
class ParsedResponse:
    """What a model answer says, in original-image pixels, and what was wrong with it."""

    decision: bool | None
    boxes: list[list[float]]
    labels: list[str]
    think: str
    rethink: str
    answer: str
    format_ok: bool
    prompt_version: str
    problems: list[str] = field(default_factory=list)
    #: The valid regions proposed in `<think>` (original pixels): what AD-FM's GIoU term matches.
    proposed_boxes: list[list[float]] = field(default_factory=list)
    #: m of AD-FM's count and focus rewards: every `bbox_2d` object of `<think>`, valid or not
    #: (an invalid one counts here but is not in `proposed_boxes`, so it never matches).
    proposed_count: int = 0
    #: The section `boxes` came from ("rethink" or "think"), None when no section held a box list.
    boxes_from: str | None = None

    @property
    def label(self) -> str | None:
        """'anomalous', 'normal', or None when the answer could not be read."""
        return None if self.decision is None else ("anomalous" if self.decision else "normal")


def _finite_number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    try:
        f = float(v)
    except (OverflowError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _coords(v: Any) -> list[float] | None:
    if not isinstance(v, list) or len(v) != 4:
        return None
    nums = [_finite_number(x) for x in v]
    return None if any(n is None for n in nums) else nums  # type: ignore[return-value]


def _collect(value: Any, found: list[tuple[list[float], str]], problems: list[str]) -> None:
    """Collect boxes from a decoded JSON value: dicts with a box key, lists of them, or bare xyxy."""
    if isinstance(value, dict):
        key = next((k for k in _BOX_KEYS if k in value), None)
        if key is None:
            return
        coords = _coords(value[key])
        if coords is None:
            problems.append(f"invalid box {str(value[key])[:80]!r}: need 4 finite numbers")
            return
        label = value.get("label", "")
        found.append((coords, str(label)[:MAX_LABEL_CHARS] if label is not None else ""))
    elif isinstance(value, list):
        coords = _coords(value)
        if coords is not None:
            found.append((coords, ""))
            return
        for item in value:
            if isinstance(item, dict | list):
                _collect(item, found, problems)


def _proposals(value: Any, found: list[list[float] | None]) -> None:
    """Collect the `bbox_2d` objects of a decoded JSON value (None for one whose value is not 4
    finite numbers). Bare coordinate lists and other keys are not proposals."""
    if isinstance(value, dict):
        if "bbox_2d" in value:
            found.append(_coords(value["bbox_2d"]))
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict | list):
                _proposals(item, found)


def _json_values(section: str) -> Iterator[tuple[int, int, Any | None]]:
    """(start, end, decoded value or None when the JSON there is malformed) for each JSON candidate."""
    pos = 0
    for _ in range(MAX_JSON_CANDIDATES):
        m = _JSON_START_RE.search(section, pos)
        if m is None:
            return
        try:
            value, end = _DECODER.raw_decode(section, m.start())
        except (ValueError, RecursionError):
            yield m.start(), m.start() + 1, None
            pos = m.start() + 1
            continue
        yield m.start(), end, value
        pos = end


def box_spans(section: str) -> list[tuple[int, int, list[tuple[list[float], str]]]]:
    """Where a section's text writes boxes, read as the parser reads them: (start, end, [(xyxy as
    written — model-grid pixels —, label)]) for each JSON value that holds any. For showing the
    reasoning with its boxes rewritten in image pixels (the review dashboard)."""
    out: list[tuple[int, int, list[tuple[list[float], str]]]] = []
    for start, end, value in _json_values(section[:MAX_BOX_SECTION_CHARS]):
        found: list[tuple[list[float], str]] = []
        if value is not None:
            _collect(value, found, [])
        if found:
            out.append((start, end, found))
    return out


def _boxes_in(section: str, problems: list[str]) -> list[tuple[list[float], str]] | None:
    """Boxes written in a section; None when the section holds no box list at all."""
    if len(section) > MAX_BOX_SECTION_CHARS:
        problems.append(f"section longer than {MAX_BOX_SECTION_CHARS} chars; boxes read from its start")
        section = section[:MAX_BOX_SECTION_CHARS]
    found: list[tuple[list[float], str]] = []
    saw_list = False
    for start, _end, value in _json_values(section):
        if value is None:
            if any(k in section[start : start + 40] for k in _BOX_KEYS) or section.startswith("[{", start):
                problems.append(f"malformed JSON at char {start}: {section[start:start + 60]!r}")
            continue
        if isinstance(value, list):
            saw_list = True
        _collect(value, found, problems)
    return found if (found or saw_list) else None


def _proposed_in(section: str) -> list[list[float] | None]:
    """The `bbox_2d` objects of a section (the paper's B(y)), None for each invalid one."""
    found: list[list[float] | None] = []
    for _, _end, value in _json_values(section[:MAX_BOX_SECTION_CHARS]):
        if value is not None:
            _proposals(value, found)
    return found[:MAX_BOXES]


def _sections(text: str, problems: list[str]) -> tuple[dict[str, str], list[tuple[str, int, int, str]]]:
    """Section texts by name (first opening tag to its closing tag) and the raw tag sequence."""
    tags = [
        (("/" if m.group(1) else "") + m.group(2).lower(), m.start(), m.end(), m.group(0))
        for m in _TAG_RE.finditer(text)
    ]
    sections: dict[str, str] = {}
    for name in ("think", "rethink", "answer"):
        opens = [t for t in tags if t[0] == name]
        closes = [t for t in tags if t[0] == "/" + name]
        if len(opens) > 1:
            problems.append(f"<{name}> appears {len(opens)} times; the first is read")
        if not opens:
            if closes:
                problems.append(f"</{name}> without <{name}>")
            continue
        start = opens[0][2]
        close = next((t for t in closes if t[1] >= start), None)
        if close is None:
            nxt = next((t for t in tags if t[1] >= start and t[0] != name), None)
            end = nxt[1] if nxt else len(text)
            problems.append(f"<{name}> is not closed")
        else:
            end = close[1]
        sections[name] = text[start:end]
    return sections, tags


def _format_holds(text: str, tags: list[tuple[str, int, int, str]], pv: PromptVersion) -> bool:
    expected: list[str] = []
    for s in pv.sections:
        expected += [s, "/" + s]
    if [t[0] for t in tags] != expected:
        return False
    if any(t[3] != f"<{t[0]}>" for t in tags):
        return False
    # Only whitespace outside the sections.
    outside = [text[: tags[0][1]]] + [text[tags[i][2] : tags[i + 1][1]] for i in range(1, len(tags) - 1, 2)]
    outside.append(text[tags[-1][2] :])
    return all(not part.strip() for part in outside)


def parse_response(
    text: object,
    grid: ModelGrid | None = None,
    version: str = DEFAULT_PROMPT_VERSION,
) -> ParsedResponse:
    """Read a model answer. Never raises, whatever `text` is.

    `grid` maps boxes from model-grid pixels to original-image pixels and clips them to the image;
    without it, boxes stay as written (corners ordered). `format_ok` is True only when the sections
    of `version` appear once each, in order, with nothing but whitespace around them, the answer is
    exactly yes/no, and every box list is well formed.
    """
    problems: list[str] = []
    try:
        pv = PROMPT_VERSIONS.get(version)
        if pv is None:
            problems.append(f"unknown prompt version {version!r}; read as {DEFAULT_PROMPT_VERSION}")
            pv = PROMPT_VERSIONS[DEFAULT_PROMPT_VERSION]
        if not isinstance(text, str):
            problems.append(f"response is {type(text).__name__}, not str")
            text = "" if text is None else str(text)
        fenced = _FENCE_RE.search(text) is not None
        if fenced:
            problems.append("code fence in response")
            text = _FENCE_RE.sub("", text)
        parsed = _parse(text, grid, pv, problems)
        return replace(parsed, format_ok=False) if fenced else parsed
    except Exception as exc:  # the parser's promise is to never raise; record instead
        problems.append(f"parser error: {type(exc).__name__}: {exc}")
        return ParsedResponse(None, [], [], "", "", "", False, version, problems)


def _parse(text: str, grid: ModelGrid | None, pv: PromptVersion, problems: list[str]) -> ParsedResponse:
    sections, tags = _sections(text, problems)
    format_ok = _format_holds(text, tags, pv)
    if tags and not format_ok:
        problems.append(
            "sections not in the form " + "".join(f"<{s}>…</{s}>" for s in pv.sections)
        )
    elif not tags:
        problems.append("no <think>/<rethink>/<answer> tags")

    # Decision
    answer = sections.get("answer", "")
    decision: bool | None = None
    word = answer.strip().strip(".!").strip().lower()
    if word in ("yes", "no"):
        decision = word == "yes"
    elif "answer" in sections:
        words = {w.lower() for w in _YES_NO_RE.findall(answer)}
        if len(words) == 1:
            decision = words.pop() == "yes"
            problems.append(f"answer is not exactly yes/no: {answer.strip()[:60]!r}")
        else:
            problems.append(f"answer is neither yes nor no: {answer.strip()[:60]!r}")
        format_ok = False
    else:
        problems.append("no <answer>")

    # Boxes per section; the prediction is the most authoritative section that holds a box list.
    n_problems = len(problems)
    found: dict[str, list[tuple[list[float], str]] | None] = {
        name: _boxes_in(sections[name], problems) for name in pv.boxes_from if name in sections
    }
    if len(problems) > n_problems:
        format_ok = False
    source = next((name for name in pv.boxes_from if found.get(name) is not None), None)
    boxes, labels = _place_boxes((found[source] or []) if source else [], grid, problems)
    proposals = _proposed_in(sections.get("think", ""))
    proposed, _ = _place_boxes([(c, "") for c in proposals if c is not None], grid, [])

    return ParsedResponse(
        decision=decision,
        boxes=boxes,
        labels=labels,
        think=sections.get("think", "").strip(),
        rethink=sections.get("rethink", "").strip(),
        answer=answer.strip(),
        format_ok=format_ok and decision is not None,
        prompt_version=pv.name,
        problems=problems,
        proposed_boxes=proposed,
        proposed_count=len(proposals),
        boxes_from=source,
    )


def _place_boxes(
    raw: list[tuple[list[float], str]], grid: ModelGrid | None, problems: list[str]
) -> tuple[list[list[float]], list[str]]:
    """Order corners, map grid → original pixels and clip (with a grid); drop boxes without area."""
    if len(raw) > MAX_BOXES:
        problems.append(f"{len(raw)} boxes; only the first {MAX_BOXES} are kept")
        raw = raw[:MAX_BOXES]
    boxes: list[list[float]] = []
    labels: list[str] = []
    for coords, lab in raw:
        x1, y1, x2, y2 = coords
        b = [min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)]
        if grid is not None:
            b = [b[0] / grid.scale_x, b[1] / grid.scale_y, b[2] / grid.scale_x, b[3] / grid.scale_y]
            b = [
                min(max(b[0], 0.0), grid.orig_width),
                min(max(b[1], 0.0), grid.orig_height),
                min(max(b[2], 0.0), grid.orig_width),
                min(max(b[3], 0.0), grid.orig_height),
            ]
        if not all(math.isfinite(v) for v in b):
            problems.append(f"box {coords} is not finite after mapping; dropped")
            continue
        if b[2] - b[0] <= 0 or b[3] - b[1] <= 0:
            problems.append(f"box {coords} has no area inside the image; dropped")
            continue
        boxes.append(b)
        labels.append(lab)
    return boxes, labels


def format_response(
    decision: bool,
    boxes: list[list[float]] | None = None,
    labels: list[str] | None = None,
    version: str = DEFAULT_PROMPT_VERSION,
    think: str = "Scanning the part.",
    rethink: str = "Examining the proposed regions.",
) -> str:
    """Write an answer in a prompt version's format (boxes in model-grid pixels).

    Used to make supervised warm-start targets and test fixtures, so they follow the parser exactly.
    """
    pv = get_prompt_version(version)
    labels = labels or ["defect"] * len(boxes or [])
    items = [
        {"bbox_2d": [round(float(v)) for v in b], "label": lab}
        for b, lab in zip(boxes or [], labels, strict=True)
    ]
    box_json = json.dumps(items)
    parts = [f"<think>{think} {box_json}</think>"]
    if "rethink" in pv.sections:
        parts.append(f"<rethink>{rethink} {box_json}</rethink>")
    parts.append(f"<answer>{'yes' if decision else 'no'}</answer>")
    return "".join(parts)
