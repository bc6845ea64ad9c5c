"""A TRL/transformers callback that splits each GRPO optimizer step into its phases.

Installed through `adfm.trainer.grpo.train(callbacks=[...])`, it reads the phases off events that
every GRPO step goes through, without changing what the trainer does:
- step start / pre-optimizer / step end: the trainer's own callback events;
- generation: the model's `generate` is wrapped while training runs (TRL samples through it);
- forward passes: hooks on the model TRL calls for log-probabilities (the PEFT model; its forward
  includes TRL's fused LM head). A pass with autograd on, outside generation, is a training pass;
  one with autograd off, outside generation, is a scoring pass (reference model / old-policy
  log-probs). Generation calls the inner model, not this one.

On a GPU every boundary synchronises the device, so each phase is its own kernels' time.
Phases of a step (seconds):
  generation_s       inside generate (image encoding, prefill, decoding), summed over calls
  preparation_s      step start → first training forward, minus generation: image preprocessing,
                     tokenisation, rewards and the scoring passes
  scoring_forward_s  the scoring passes alone (part of preparation_s)
  forward_backward_s first training forward → pre-optimizer event: forward, loss, backward, clipping
  train_forward_s    the training forwards alone, to per-token log-probs (part of forward_backward_s)
  optimizer_s        pre-optimizer event → step end: optimizer and scheduler step, zero_grad
  step_s             step start → step end (the sum of the above)
  wall_s             previous step end → this step end: adds data loading, logging and saving
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainerCallback


@dataclass
class GenerateCall:
    seconds: float
    prompt_tokens: list[int]
    padded_prompt_length: int
    new_tokens: int
    image_patches: list[int]


@dataclass
class ForwardPass:
    seconds: float
    sequences: int
    length: int


@dataclass
class StepRecord:
    step: int
    wall_s: float = 0.0
    step_s: float = 0.0
    generation_s: float = 0.0
    preparation_s: float = 0.0
    scoring_forward_s: float = 0.0
    forward_backward_s: float = 0.0
    train_forward_s: float = 0.0
    optimizer_s: float = 0.0
    peak_gpu_memory_bytes: int | None = None
    peak_gpu_reserved_bytes: int | None = None
    generate_calls: list[GenerateCall] = field(default_factory=list)
    train_passes: list[ForwardPass] = field(default_factory=list)
    scoring_passes: list[ForwardPass] = field(default_factory=list)


class StepTimer(TrainerCallback):
    """Per-step phase timings and what each phase processed; `records` holds one StepRecord per step."""

    def __init__(self) -> None:
        self.records: list[StepRecord] = []
        self.model: Any = None
        self._cuda = False
        self._in_generate = False
        self._handles: list[Any] = []
        self._wrapped: Any = None
        self._current: StepRecord | None = None
        self._begin = self._pre_opt = self._first_train = self._last_end = 0.0
        self._pass_start: float | None = None
        self._pass_shape: tuple[int, int] = (0, 0)

    # -- clock -------------------------------------------------------------------------------
    def _now(self) -> float:
        if self._cuda:
            import torch

            torch.cuda.synchronize()
        return time.perf_counter()

    # -- installation --------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        import torch

        if model is None:
            raise RuntimeError("StepTimer needs the model in on_train_begin (transformers passes it)")
        self.model = model
        self._cuda = next(model.parameters()).is_cuda
        self._wrap_generate(model)
        self._handles = [
            model.register_forward_pre_hook(self._pass_begins, with_kwargs=True),
            model.register_forward_hook(self._pass_ends),
        ]
        if self._cuda:
            torch.cuda.reset_peak_memory_stats()
        self._last_end = self._now()

    def on_train_end(self, args, state, control, **kwargs):
        self.close()

    def close(self) -> None:
        """Remove the hooks and the generate wrapper (also after a run that stopped with an error)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._wrapped is not None:
            del self._wrapped.generate  # the instance attribute; the class method shows through again
            self._wrapped = None
        self.model = None

    def _wrap_generate(self, model: Any) -> None:
        original = model.generate

        def timed_generate(*args: Any, **kwargs: Any) -> Any:
            start = self._now()
            self._in_generate = True
            try:
                out = original(*args, **kwargs)
            finally:
                self._in_generate = False
            seconds = self._now() - start
            self._record_generate(seconds, kwargs, out)
            return out

        model.generate = timed_generate
        self._wrapped = model

    def _record_generate(self, seconds: float, kwargs: dict[str, Any], out: Any) -> None:
        input_ids = kwargs.get("input_ids")
        if input_ids is None or self._current is None:
            return
        mask = kwargs.get("attention_mask")
        prompt_tokens = mask.sum(dim=1).tolist() if mask is not None else [input_ids.shape[1]] * input_ids.shape[0]
        sequences = out.sequences if hasattr(out, "sequences") else out
        grid = kwargs.get("image_grid_thw")
        patches = grid.prod(dim=-1).tolist() if grid is not None else []
        self._current.generation_s += seconds
        self._current.generate_calls.append(
            GenerateCall(seconds, [int(t) for t in prompt_tokens], int(input_ids.shape[1]),
                         int(sequences.shape[1] - input_ids.shape[1]), [int(p) for p in patches])
        )

    # -- forward passes ------------------------------------------------------------------------
    def _pass_begins(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self._in_generate or self._current is None:
            return
        import torch

        input_ids = kwargs.get("input_ids", args[0] if args else None)
        self._pass_start = self._now()
        self._pass_shape = tuple(input_ids.shape[:2]) if input_ids is not None and input_ids.dim() == 2 else (0, 0)
        if torch.is_grad_enabled() and not self._first_train:
            self._first_train = self._pass_start

    def _pass_ends(self, module: Any, args: tuple[Any, ...], output: Any) -> None:
        if self._in_generate or self._current is None or self._pass_start is None:
            return
        import torch

        seconds = self._now() - self._pass_start
        self._pass_start = None
        record = ForwardPass(seconds, int(self._pass_shape[0]), int(self._pass_shape[1]))
        if torch.is_grad_enabled():
            self._current.train_forward_s += seconds
            self._current.train_passes.append(record)
        else:
            self._current.scoring_forward_s += seconds
            self._current.scoring_passes.append(record)

    # -- step events ---------------------------------------------------------------------------
    def on_step_begin(self, args, state, control, **kwargs):
        import torch

        if self._cuda:
            torch.cuda.reset_peak_memory_stats()
        self._current = StepRecord(step=state.global_step + 1)
        self._first_train = 0.0
        self._pre_opt = 0.0
        self._begin = self._now()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self._pre_opt = self._now()

    def on_step_end(self, args, state, control, **kwargs):
        import torch

        end = self._now()
        rec = self._current
        if rec is None:
            return
        pre_opt = self._pre_opt or end
        first_train = self._first_train or pre_opt
        rec.step_s = end - self._begin
        rec.wall_s = end - self._last_end
        rec.preparation_s = max(0.0, first_train - self._begin - rec.generation_s)
        rec.forward_backward_s = pre_opt - first_train
        rec.optimizer_s = end - pre_opt
        if self._cuda:
            rec.peak_gpu_memory_bytes = int(torch.cuda.max_memory_allocated())
            rec.peak_gpu_reserved_bytes = int(torch.cuda.max_memory_reserved())
        self.records.append(rec)
        self._current = None
        self._last_end = end
