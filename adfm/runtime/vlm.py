"""Run an exported model (GGUF language model + mmproj) with llama.cpp: the one torch-free way.

The appliance's inference worker, the GGUF evaluation backend and the export's own verification all
answer images through `GgufVlm`, so what was verified at export is what runs on the line.

Why not `Llama.create_chat_completion`: the stock chat handlers apply a repeat penalty, report
M-RoPE positions as "prompt tokens" and hide the generated token ids. Here the prompt is rendered
with the model's own chat template (exactly as the HF processor renders it), tokenized and encoded
by llama.cpp's multimodal library (mtmd), and decoded greedily with the vision special tokens
suppressed (as in training), so token ids, counts and answers are exact.

Images must already be on their model grid (`vlm.grid_for(w, h).resize(image)`): the projector is
told the manifest's pixel budget, so a grid-sized image passes through its resize untouched and
llama.cpp sees the same pixels as the HF processor did.

On CPUs with Intel AMX, llama.cpp's AMX matrix kernels (llama-cpp-python 0.3.36) crash on
quantized models (seen on the build VMs: SIGSEGV in ggml_backend_amx_mul_mat), so by default the
CPU's extra buffer types are turned off there (`cpu_extra_buffers=None` means: on unless the CPU
has AMX). Line PCs without AMX keep llama.cpp's repacked fast paths.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import hashlib
import io
import logging
import math
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..geometry import GRID_FACTOR, ModelGrid
from ..manifest import ModelManifest, load_model_dir
from ..protocol import VISION_SPECIAL_TOKENS, build_messages, to_image_url_messages

if TYPE_CHECKING:
    from PIL import Image

#: One merged visual token covers a 28×28 pixel cell of the grid.
PIXELS_PER_TOKEN = GRID_FACTOR * GRID_FACTOR

log = logging.getLogger("adfm.llama")

#: ggml log levels (1 debug, 2 info, 3 warn, 4 error; 5 continues the previous line) → logging.
#: llama.cpp's info lines are chatty load reports: they go to DEBUG.
_LLAMA_LEVELS = {1: logging.DEBUG, 2: logging.DEBUG, 3: logging.WARNING, 4: logging.ERROR}
_recent_errors: deque[str] = deque(maxlen=20)
#: llama.cpp warnings that hold for every adfm model and say nothing wrong about this one: adfm
#: resizes each image itself onto the grid the model was trained on (manifest min/max_pixels), so
#: llama.cpp's own advice on Qwen-VL image-token counts does not apply
_EXPECTED_WARNINGS = ("Qwen-VL models require at minimum",)
_log_callback: Any = None
_log_lock = threading.Lock()
_load_lock = threading.Lock()
#: Models still open; closed at interpreter exit, before llama-cpp-python's own teardown runs
#: (its finalizers fail once the interpreter has dropped the modules they call into).
_open_models: weakref.WeakSet[GgufVlm] = weakref.WeakSet()


@atexit.register
def _close_open_models() -> None:
    for vlm in list(_open_models):
        with contextlib.suppress(Exception):
            vlm.close()


def route_llama_logs() -> None:
    """Send llama.cpp and mtmd log lines to the `adfm.llama` logger instead of stderr.

    Warnings and errors are kept (the last few appear in exception messages); info lines go to
    DEBUG. Process-wide and idempotent.
    """
    global _log_callback
    import llama_cpp
    import llama_cpp.mtmd_cpp as mtmd

    with _log_lock:
        if _log_callback is not None:
            return
        last = [logging.DEBUG]

        @llama_cpp.llama_log_callback
        def _callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
            lvl = last[0] if level == 5 else _LLAMA_LEVELS.get(level, logging.DEBUG)
            line = text.decode("utf-8", errors="replace").rstrip()
            if lvl == logging.WARNING and any(w in line for w in _EXPECTED_WARNINGS):
                lvl = logging.DEBUG  # true of every adfm export: not a misconfiguration
            last[0] = lvl  # a continuation (level 5) goes where its first line went
            if not line:
                return
            if lvl >= logging.WARNING:
                _recent_errors.append(line)
            log.log(lvl, "%s", line)

        _log_callback = _callback  # keep a reference: the C side holds only a pointer
        llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))
        mtmd.mtmd_log_set(_callback, ctypes.c_void_p(0))
        mtmd.mtmd_helper_log_set(_callback, ctypes.c_void_p(0))


def cpu_has_amx() -> bool:
    """True on CPUs with Intel AMX (Linux /proc/cpuinfo flags)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return "amx_int8" in line.split()
    except OSError:
        pass
    return False


@contextlib.contextmanager
def _without_cpu_extra_buffers() -> Iterator[None]:
    """Load a model with llama.cpp's CPU "extra" buffer types (AMX, repacked weights) turned off.

    llama-cpp-python exposes no switch for `llama_model_params.use_extra_bufts`, so its default
    parameter factory is wrapped while the model loads (under a process-wide lock).
    """
    import llama_cpp.llama as llama_module

    lowlevel = llama_module.llama_cpp
    original = lowlevel.llama_model_default_params

    def without_extra():
        params = original()
        params.use_extra_bufts = False
        return params

    with _load_lock:
        lowlevel.llama_model_default_params = without_extra
        try:
            yield
        finally:
            lowlevel.llama_model_default_params = original


def recent_llama_errors(n: int = 3) -> str:
    """The last few llama.cpp warnings/errors, for exception messages."""
    lines = list(_recent_errors)[-n:]
    return " | ".join(lines) if lines else "no message from llama.cpp"


@dataclass(frozen=True)
class Generation:
    """One answer: its text, token counts (image tokens included in the prompt) and wall time."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    #: generated token ids (the end-of-generation token not included)
    token_ids: tuple[int, ...] = ()
    #: visual tokens each image took, in prompt order
    image_tokens: tuple[int, ...] = ()
    #: True when the model ended its answer; False when max_tokens cut it
    finished: bool = False
    #: prompt positions taken from the kept prefix (system prompt, reference image) instead of evaluated;
    #: with Qwen's multimodal rope an image spans fewer positions than tokens (see prefix_tokens_reused)
    prefix_reused: int = 0
    #: prompt tokens (an image's visual tokens included) in that kept prefix: not evaluated again
    prefix_tokens_reused: int = 0
    #: where `seconds` went: the vision encoder and projector on the images (not on a reused prefix's)
    vision_seconds: float = 0.0
    #: the language model over the prompt's text and image tokens (a reused prefix's not included)
    prefill_seconds: float = 0.0
    #: the answer tokens, one decode step each
    generate_seconds: float = 0.0


@dataclass(frozen=True)
class ForcedRun:
    """A prompt (each image as its run of <|image_pad|> ids) and logits along a given continuation."""

    prompt_token_ids: tuple[int, ...]
    image_tokens: tuple[int, ...]
    logits: np.ndarray  # (len(continuation), vocab)


@dataclass(frozen=True)
class _Prompt:
    """A prompt evaluated into the context, as token ids (each image as its <|image_pad|> run)."""

    token_ids: tuple[int, ...]
    image_tokens: tuple[int, ...]
    #: positions of the prefix that were already in the KV cache and not evaluated again
    reused_positions: int = 0
    vision_seconds: float = 0.0
    prefill_seconds: float = 0.0
    reused_tokens: int = 0


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB as the HF processor makes it: transparent pixels over white, other modes converted."""
    from PIL import Image as PILImage

    if img.mode == "RGB":
        return img
    if "A" in img.getbands() or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        return PILImage.alpha_composite(PILImage.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return img.convert("RGB")


class GgufVlm:
    """A loaded exported model; calls from several threads are serialized.

    `cpu_extra_buffers`: llama.cpp's AMX / repacked CPU weight layouts; None = on unless the CPU
    has AMX (see the module note). `n_gpu_layers`: language-model layers on the GPU (0 none, -1
    all); `mmproj_gpu`: the vision projector on the GPU (None: when `n_gpu_layers` is not 0). Asking
    for the GPU where llama.cpp cannot use one raises RuntimeError instead of running on the CPU.
    `min_tokens`: every answer runs at least this many tokens (the end of generation is suppressed
    until then), so benchmarks of random-weight models, which stop at random, compare answers of
    one fixed length; 0 (the line's setting) lets the model stop.
    """

    def __init__(
        self,
        model_dir: str | Path,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        check_hashes: bool = True,
        *,
        n_gpu_layers: int = 0,
        mmproj_gpu: bool | None = None,
        cpu_extra_buffers: bool | None = None,
        reuse_prefix: bool = True,
        min_tokens: int = 0,
    ) -> None:
        if min_tokens < 0:
            raise ValueError(f"min_tokens must be >= 0, got {min_tokens}")
        model_dir = Path(model_dir)
        manifest = load_model_dir(model_dir, check_hashes=check_hashes)
        self._load(
            model_dir / manifest.file("model").path,
            model_dir / manifest.file("mmproj").path,
            manifest,
            n_ctx=n_ctx,
            n_threads=n_threads,
            n_gpu_layers=n_gpu_layers,
            mmproj_gpu=mmproj_gpu,
            cpu_extra_buffers=cpu_extra_buffers,
        )
        self.reuse_prefix = reuse_prefix
        self.min_tokens = min_tokens

    @classmethod
    def from_files(
        cls,
        model_path: str | Path,
        mmproj_path: str | Path,
        manifest: ModelManifest,
        *,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        n_gpu_layers: int = 0,
        mmproj_gpu: bool | None = None,
        cpu_extra_buffers: bool | None = None,
    ) -> GgufVlm:
        """Load a GGUF pair that has no manifest on disk yet (the export verifies before it writes one)."""
        self = cls.__new__(cls)
        self._load(
            Path(model_path), Path(mmproj_path), manifest,
            n_ctx=n_ctx, n_threads=n_threads, n_gpu_layers=n_gpu_layers, mmproj_gpu=mmproj_gpu,
            cpu_extra_buffers=cpu_extra_buffers,
        )
        self.reuse_prefix = False  # verification compares fresh evaluations
        return self

    # ------------------------------------------------------------------------------------------
    # loading

    def _load(
        self,
        model_path: Path,
        mmproj_path: Path,
        manifest: ModelManifest,
        *,
        n_ctx: int,
        n_threads: int | None,
        n_gpu_layers: int,
        mmproj_gpu: bool | None,
        cpu_extra_buffers: bool | None,
    ) -> None:
        import llama_cpp
        import llama_cpp.mtmd_cpp as mtmd

        route_llama_logs()
        self._lock = threading.Lock()
        self._mtmd_ctx = None
        self._llama = None
        self.reuse_prefix = True
        self.min_tokens = 0
        self._prefix: tuple[Any, int] | None = None  # (key of the kept prefix, its positions)
        self.manifest = manifest
        self.model_path = model_path
        self.mmproj_path = mmproj_path
        for path in (model_path, mmproj_path):
            if not path.is_file():
                raise FileNotFoundError(f"{path}: GGUF file not found")
        if n_ctx < 256:
            raise ValueError(f"n_ctx {n_ctx} is too small for an image prompt (use at least 256)")
        self._min_tokens = max(1, math.ceil(manifest.min_pixels / PIXELS_PER_TOKEN))
        self._max_tokens = max(self._min_tokens, manifest.max_pixels // PIXELS_PER_TOKEN)
        if mmproj_gpu is None:
            mmproj_gpu = n_gpu_layers != 0
        if n_gpu_layers != 0 or mmproj_gpu:
            from .gpu import gpu_offload_problem

            if (why := gpu_offload_problem()) is not None:
                raise RuntimeError(f"n_gpu_layers={n_gpu_layers}, mmproj_gpu={mmproj_gpu} ask for the GPU, but {why}")
        self.n_gpu_layers = n_gpu_layers
        self.mmproj_gpu = mmproj_gpu
        if cpu_extra_buffers is None:
            cpu_extra_buffers = not cpu_has_amx()
        self.cpu_extra_buffers = cpu_extra_buffers
        loading = contextlib.nullcontext() if cpu_extra_buffers else _without_cpu_extra_buffers()
        try:
            with loading:
                self._llama = llama_cpp.Llama(
                    model_path=str(model_path),
                    n_ctx=n_ctx,
                    n_batch=min(512, n_ctx),
                    n_ubatch=min(512, n_ctx),
                    n_threads=n_threads,
                    n_gpu_layers=n_gpu_layers,
                    logits_all=False,
                    verbose=False,
                )
        except (ValueError, RuntimeError) as exc:
            raise RuntimeError(
                f"{model_path}: llama.cpp could not load the language model: {exc} ({recent_llama_errors()})"
            ) from exc
        llama = self._llama
        params = mtmd.mtmd_context_params_default()
        params.use_gpu = mmproj_gpu
        params.print_timings = False
        params.n_threads = llama.n_threads
        # The projector resizes within this budget; equal to the manifest's, a grid image is left as is.
        params.image_min_tokens = self._min_tokens
        params.image_max_tokens = self._max_tokens
        params.warmup = False
        ctx = mtmd.mtmd_init_from_file(str(mmproj_path).encode(), llama.model, params)
        if not ctx:
            self.close()
            raise RuntimeError(
                f"{mmproj_path}: llama.cpp could not load the vision projector ({recent_llama_errors()})"
            )
        self._mtmd_ctx = ctx
        if not mtmd.mtmd_support_vision(ctx):
            self.close()
            raise RuntimeError(f"{mmproj_path}: the projector has no vision encoder")
        self._marker = mtmd.mtmd_default_marker().decode("utf-8")
        self._vocab = llama_cpp.llama_model_get_vocab(llama.model)
        self._n_vocab = llama.n_vocab()
        template = llama.metadata.get("tokenizer.chat_template")
        if not template:
            self.close()
            raise RuntimeError(f"{model_path}: the GGUF has no tokenizer.chat_template")
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self._formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=self._piece(llama.token_eos()),
            bos_token=self._piece(llama.token_bos()),
            add_generation_prompt=True,
        )
        self.suppressed_ids = tuple(self._special_id(t) for t in VISION_SPECIAL_TOKENS)
        self.image_pad_id = self._special_id("<|image_pad|>")
        _open_models.add(self)

    def _piece(self, token: int) -> str:
        if token < 0:
            return ""
        return self._llama.detokenize([token], special=True).decode("utf-8", errors="replace")

    def _special_id(self, text: str) -> int:
        ids = self._llama.tokenize(text.encode(), add_bos=False, special=True)
        if len(ids) != 1:
            raise RuntimeError(f"{self.model_path}: the vocabulary has no single token for {text}")
        return ids[0]

    def close(self) -> None:
        """Free the projector and the model (also done when the object is garbage-collected)."""
        import llama_cpp.mtmd_cpp as mtmd

        ctx, self._mtmd_ctx = getattr(self, "_mtmd_ctx", None), None
        if ctx:
            mtmd.mtmd_free(ctx)
        llama, self._llama = getattr(self, "_llama", None), None
        if llama is not None:
            llama.close()

    def __enter__(self) -> GgufVlm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # At interpreter exit module globals (contextlib, llama_cpp) may already be None: nothing
        # here may name one, and whatever close() meets is swallowed.
        try:  # noqa: SIM105 - contextlib itself may be gone
            self.close()
        except BaseException:
            pass

    # ------------------------------------------------------------------------------------------
    # public API

    @property
    def n_ctx(self) -> int:
        return self._llama.n_ctx()

    def grid_for(self, width: int, height: int) -> ModelGrid:
        """The model grid for an image of this size, with the manifest's pixel budget."""
        return ModelGrid.for_image(
            width, height, min_pixels=self.manifest.min_pixels, max_pixels=self.manifest.max_pixels
        )

    def generate(
        self,
        images: Sequence[Image.Image],
        *,
        prompt_version: str | None = None,
        product: str | None = None,
        max_tokens: int = 256,
        temperature: float = 0.0,
        seed: int = 0,
        messages: list[dict[str, Any]] | None = None,
    ) -> Generation:
        """Answer one inspection prompt. `images`: the query, or (reference, query), on their grids.

        `messages` replaces the inspection prompt with other chat messages whose `{"type": "image"}`
        slots `images` fill in order (e.g. a benchmark's multiple-choice question). Greedy when
        temperature is 0; otherwise samples from softmax(logits / temperature) with `seed`. Raises
        ValueError for bad images or a prompt that does not fit the context.
        """
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
        if temperature < 0 or not math.isfinite(temperature):
            raise ValueError(f"temperature must be finite and >= 0, got {temperature}")
        rng = np.random.default_rng(seed)
        with self._lock:
            self._require_open()
            start = time.perf_counter()
            messages = messages or self._inspection_messages(len(images), prompt_version, product)
            prompt = self._eval_prompt(images, messages, reserve=max_tokens)
            prompt_done = time.perf_counter()
            ids: list[int] = []
            finished = False
            for _ in range(max_tokens):
                logits = self._last_logits()
                token = self._choose(logits, temperature, rng)
                while len(ids) < self.min_tokens and self._is_eog(token) and np.isfinite(logits[token]):
                    logits[token] = -np.inf  # too early to stop: the best token that goes on
                    token = self._choose(logits, temperature, rng)
                if self._is_eog(token):
                    finished = True
                    break
                ids.append(token)
                self._llama.eval([token])
            done = time.perf_counter()
            text = self._llama.detokenize(ids, special=False).decode("utf-8", errors="replace")
            return Generation(
                text=text,
                prompt_tokens=len(prompt.token_ids),
                completion_tokens=len(ids),
                seconds=time.perf_counter() - start,
                token_ids=tuple(ids),
                image_tokens=prompt.image_tokens,
                finished=finished,
                prefix_reused=prompt.reused_positions,
                prefix_tokens_reused=prompt.reused_tokens,
                vision_seconds=prompt.vision_seconds,
                prefill_seconds=prompt.prefill_seconds,
                generate_seconds=done - prompt_done,
            )

    def forced_logits(
        self,
        images: Sequence[Image.Image],
        continuation: Sequence[int],
        *,
        prompt_version: str | None = None,
        product: str | None = None,
    ) -> ForcedRun:
        """The prompt's tokens and the logits for each next token along a given continuation.

        Logits row i is what the model predicts after the prompt and continuation[:i] (teacher
        forcing): the export compares them with the HF model's logits along HF's own answer.
        """
        with self._lock:
            self._require_open()
            messages = self._inspection_messages(len(images), prompt_version, product)
            prompt = self._eval_prompt(images, messages, reserve=len(continuation))
            rows = []
            for token in continuation:
                rows.append(self._last_logits())
                self._llama.eval([int(token)])
            logits = np.stack(rows) if rows else np.zeros((0, self._n_vocab), dtype=np.float32)
            return ForcedRun(prompt.token_ids, prompt.image_tokens, logits)

    def tokenize(self, text: str) -> list[int]:
        """Token ids llama.cpp gives plain text (no special tokens parsed, nothing added)."""
        self._require_open()
        return self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def image_embeddings(self, image: Image.Image) -> np.ndarray:
        """The projector's output for one grid image (visual tokens × text hidden), as the LM gets it.

        The export compares it with the HF vision tower's output to check the mmproj directly.
        """
        import llama_cpp.mtmd_cpp as mtmd

        with self._lock:
            self._require_open()
            chunks, bitmaps = self._chunks([image], self._inspection_messages(1, None, None))
            try:
                for i in range(mtmd.mtmd_input_chunks_size(chunks)):
                    chunk = mtmd.mtmd_input_chunks_get(chunks, i)
                    if mtmd.mtmd_input_chunk_get_type(chunk) != mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                        continue
                    self._encode_image(chunk)
                    n = int(mtmd.mtmd_input_chunk_get_n_tokens(chunk))
                    width = self._llama.n_embd()
                    ptr = mtmd.mtmd_get_output_embd(self._mtmd_ctx)
                    return np.ctypeslib.as_array(ptr, shape=(n * width,)).reshape(n, width).copy()
                raise RuntimeError("the prompt held no image chunk")
            finally:
                mtmd.mtmd_input_chunks_free(chunks)
                for bmp in bitmaps:
                    mtmd.mtmd_bitmap_free(bmp)

    # ------------------------------------------------------------------------------------------
    # internals

    def _require_open(self) -> None:
        if self._llama is None or not self._mtmd_ctx:
            raise RuntimeError("this GgufVlm was closed")

    def _check_images(self, images: Sequence[Image.Image]) -> list[Image.Image]:
        from PIL import Image as PILImage

        if len(images) not in (1, 2):
            raise ValueError(f"give 1 image (query) or 2 (reference, query), got {len(images)}")
        out = []
        for i, img in enumerate(images, 1):
            if not isinstance(img, PILImage.Image):
                raise ValueError(f"image {i} is a {type(img).__name__}, not a PIL image")
            w, h = img.size
            if w % GRID_FACTOR or h % GRID_FACTOR:
                raise ValueError(
                    f"image {i} is {w}x{h}, not on the model grid (sides multiples of {GRID_FACTOR}); "
                    "resize it with vlm.grid_for(width, height).resize(image)"
                )
            tokens = (w // GRID_FACTOR) * (h // GRID_FACTOR)
            if not self._min_tokens <= tokens <= self._max_tokens:
                raise ValueError(
                    f"image {i} is {w}x{h} = {tokens} visual tokens, outside the model's pixel budget "
                    f"({self._min_tokens}..{self._max_tokens} tokens); resize it with vlm.grid_for"
                )
            out.append(_to_rgb(img))
        return out

    def _inspection_messages(
        self, n_images: int, prompt_version: str | None, product: str | None
    ) -> list[dict[str, Any]]:
        version = prompt_version or self.manifest.prompt_version
        return build_messages(version, product=product, reference=n_images == 2)

    def _render(self, urls: list[str], messages: list[dict[str, Any]]) -> str:
        messages = to_image_url_messages(messages, urls)
        for msg in messages:  # the projector's marker takes each image's place in the text
            if isinstance(msg["content"], list):
                msg["content"] = [
                    {"type": "text", "text": self._marker} if b.get("type") == "image_url" else b
                    for b in msg["content"]
                ]
        return self._formatter(messages=messages).prompt

    def _chunks(self, images: Sequence[Image.Image], messages: list[dict[str, Any]]):
        """Tokenize text + images with mtmd; returns (chunks handle, bitmaps) — caller frees both.

        `self._last_digests` holds each image's PNG digest, in prompt order (the prefix key)."""
        import llama_cpp.mtmd_cpp as mtmd

        checked = self._check_images(images)
        pngs = []
        for img in checked:
            buf = io.BytesIO()
            img.save(buf, format="PNG", compress_level=1)
            pngs.append(buf.getvalue())
        self._last_digests = tuple(hashlib.blake2b(p, digest_size=16).digest() for p in pngs)
        urls = ["data:image/png;base64," + base64.b64encode(p).decode("ascii") for p in pngs]
        text = self._render(urls, messages).encode("utf-8")
        bitmaps = []
        chunks = mtmd.mtmd_input_chunks_init()
        try:
            for i, png in enumerate(pngs, 1):
                arr = (ctypes.c_uint8 * len(png)).from_buffer_copy(png)
                bmp = mtmd.mtmd_helper_bitmap_init_from_buf(self._mtmd_ctx, arr, len(png), False)
                if not bmp:
                    raise ValueError(f"image {i}: llama.cpp could not decode it ({recent_llama_errors()})")
                bitmaps.append(bmp)
            inp = mtmd.mtmd_input_text()
            inp.text = text
            inp.text_len = len(text)
            inp.add_special = True
            inp.parse_special = True
            arr_t = mtmd.mtmd_bitmap_p_ctypes * max(1, len(bitmaps))
            rc = mtmd.mtmd_tokenize(self._mtmd_ctx, chunks, ctypes.byref(inp), arr_t(*bitmaps), len(bitmaps))
            if rc != 0:
                raise ValueError(f"llama.cpp could not tokenize the prompt (mtmd_tokenize returned {rc})")
        except BaseException:
            mtmd.mtmd_input_chunks_free(chunks)
            for bmp in bitmaps:
                mtmd.mtmd_bitmap_free(bmp)
            raise
        return chunks, bitmaps

    def _eval_prompt(self, images, messages: list[dict[str, Any]], *, reserve: int) -> _Prompt:
        """Evaluate the prompt into the context (reusing a kept prefix when it matches, otherwise from
        an empty context); the last logits predict the first answer token."""
        import llama_cpp
        import llama_cpp.mtmd_cpp as mtmd

        llama = self._llama
        chunks, bitmaps = self._chunks(images, messages)
        try:
            n_chunks = mtmd.mtmd_input_chunks_size(chunks)
            n_pos = sum(
                int(mtmd.mtmd_input_chunk_get_n_pos(mtmd.mtmd_input_chunks_get(chunks, i)))
                for i in range(n_chunks)
            )
            if n_pos + reserve > llama.n_ctx():
                raise ValueError(
                    f"prompt ({n_pos} positions) + {reserve} answer tokens exceed the context "
                    f"of {llama.n_ctx()}; raise n_ctx or lower the pixel budget / max_tokens"
                )
            last = mtmd.mtmd_input_chunks_get(chunks, n_chunks - 1) if n_chunks else None
            if last is None or mtmd.mtmd_input_chunk_get_type(last) != mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
                raise RuntimeError("the rendered prompt does not end with text; the chat template is unusable")
            kinds = [mtmd.mtmd_input_chunk_get_type(mtmd.mtmd_input_chunks_get(chunks, i)) for i in range(n_chunks)]
            texts = [self._chunk_tokens(mtmd.mtmd_input_chunks_get(chunks, i))
                     if kind == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT else None for i, kind in enumerate(kinds)]
            # Everything before the last image (system prompt, reference image, the text up to the
            # query) is the same for every part of a recipe: kept in the KV cache, it is not evaluated
            # again. The key holds the prefix's token ids and its images' digests.
            images_at = [i for i, kind in enumerate(kinds) if kind == mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE]
            split = images_at[-1] if images_at and self.reuse_prefix else 0
            digests = iter(self._last_digests)
            key = tuple(texts[i] if texts[i] is not None else next(digests) for i in range(split))
            ids: list[int] = []
            image_tokens: list[int] = []
            memory = llama_cpp.llama_get_memory(llama.ctx)
            start, reused = 0, 0
            if split and self._prefix is not None and self._prefix[0] == key and llama_cpp.llama_memory_seq_rm(
                memory, llama_cpp.llama_seq_id(0), llama_cpp.llama_pos(self._prefix[1]), llama_cpp.llama_pos(-1)
            ):
                start, reused = split, self._prefix[1]
                llama.n_tokens = reused
                for i in range(split):  # the prefix's ids, as an evaluation would have listed them
                    tokens = texts[i]
                    if tokens is None:
                        n_img = int(mtmd.mtmd_input_chunk_get_n_tokens(mtmd.mtmd_input_chunks_get(chunks, i)))
                        image_tokens.append(n_img)
                        tokens = (self.image_pad_id,) * n_img
                    ids.extend(tokens)
            else:
                self._prefix = None
                llama_cpp.llama_memory_clear(memory, True)
                llama.reset()
            reused_tokens = len(ids)
            vision_s = prefill_s = 0.0
            for i in range(start, n_chunks):
                if split and i == split and not reused:
                    self._prefix = (key, llama.n_tokens)
                chunk = mtmd.mtmd_input_chunks_get(chunks, i)
                tokens = texts[i]
                if tokens is not None:
                    t0 = time.perf_counter()
                    if tokens:
                        llama.eval(tokens)
                    prefill_s += time.perf_counter() - t0
                    ids.extend(tokens)
                    continue
                n_img = int(mtmd.mtmd_input_chunk_get_n_tokens(chunk))
                t0 = time.perf_counter()
                self._encode_image(chunk)
                t1 = time.perf_counter()
                self._decode_image(chunk)
                vision_s += t1 - t0
                prefill_s += time.perf_counter() - t1
                image_tokens.append(n_img)
                ids.extend([self.image_pad_id] * n_img)
            return _Prompt(tuple(ids), tuple(image_tokens), reused, vision_s, prefill_s, reused_tokens)
        finally:
            mtmd.mtmd_input_chunks_free(chunks)
            for bmp in bitmaps:
                mtmd.mtmd_bitmap_free(bmp)

    def _encode_image(self, chunk: Any) -> None:
        """Run the vision encoder and projector on an image chunk (the output stays in the mtmd context)."""
        import llama_cpp.mtmd_cpp as mtmd

        if mtmd.mtmd_encode_chunk(self._mtmd_ctx, chunk) != 0:
            self._prefix = None
            raise RuntimeError(f"llama.cpp failed to encode an image ({recent_llama_errors()})")

    def _decode_image(self, chunk: Any) -> None:
        """Evaluate the encoded image's embeddings with the language model at the next positions."""
        import llama_cpp
        import llama_cpp.mtmd_cpp as mtmd

        llama = self._llama
        new_n_past = llama_cpp.llama_pos(0)
        rc = mtmd.mtmd_helper_decode_image_chunk(
            self._mtmd_ctx, llama.ctx, chunk, mtmd.mtmd_get_output_embd(self._mtmd_ctx),
            llama_cpp.llama_pos(llama.n_tokens), llama_cpp.llama_seq_id(0), llama.n_batch,
            ctypes.byref(new_n_past), mtmd.mtmd_helper_post_decode_callback(), None,
        )
        if rc != 0:
            self._prefix = None
            raise RuntimeError(f"llama.cpp failed to evaluate an image (code {rc}; {recent_llama_errors()})")
        llama.n_tokens = new_n_past.value

    @staticmethod
    def _chunk_tokens(chunk: Any) -> tuple[int, ...]:
        import llama_cpp.mtmd_cpp as mtmd

        n = ctypes.c_size_t()
        ptr = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
        return tuple(int(ptr[j]) for j in range(n.value))

    def _last_logits(self) -> np.ndarray:
        import llama_cpp

        ptr = llama_cpp.llama_get_logits_ith(self._llama.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self._n_vocab,)).astype(np.float32, copy=True)

    def _choose(self, logits: np.ndarray, temperature: float, rng: np.random.Generator) -> int:
        logits[list(self.suppressed_ids)] = -np.inf
        if temperature == 0.0:
            return int(np.argmax(logits))
        z = logits.astype(np.float64) / temperature
        z -= z.max()
        p = np.exp(z)
        p /= p.sum()
        return int(rng.choice(len(p), p=p))

    def _is_eog(self, token: int) -> bool:
        import llama_cpp

        return bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))
