"""Training presets: the paper's Table 4 rows and Fig. 5's reward variants.

A preset picks the prompt version and the reward functions. The total reward GRPO sees is
r_acc + r_format, where r_acc is the sum of the preset's accuracy terms (TRL sums the reward
functions with weight 1 each and logs every one of them separately).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from . import rewards
from .rewards import RewardFunction

#: Accuracy terms a preset may combine, by name.
ACCURACY_TERMS = ("classification", "localization", "count", "random")


@dataclass(frozen=True)
class Preset:
    """A named training recipe: which prompt the model answers and which rewards score it."""

    name: str
    prompt_version: str
    accuracy_terms: tuple[str, ...]
    description: str
    trainable: bool = True

    @property
    def needs_boxes(self) -> bool:
        """Whether anomalous samples need ground-truth boxes (the localization terms read them)."""
        return any(t in ("localization", "count") for t in self.accuracy_terms)

    def reward_functions(
        self,
        alpha: float = rewards.DEFAULT_ALPHA,
        random_sigma: float = rewards.DEFAULT_RANDOM_SIGMA,
        random_seed: int = 0,
    ) -> list[RewardFunction]:
        """The TRL reward functions: the accuracy terms, then the format reward."""
        by_term: dict[str, RewardFunction] = {
            "classification": rewards.classification_reward,
            "localization": partial(rewards.localization_reward, alpha=alpha),
            "count": partial(rewards.count_localization_reward, alpha=alpha),
            "random": partial(rewards.random_reward, sigma=random_sigma, seed=random_seed),
        }
        return [by_term[t] for t in self.accuracy_terms] + [rewards.format_reward]


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "zero-shot",
            "multi-stage-v1",
            ("classification",),
            "the base model as is (Table 4's first row): evaluated, not trained",
            trainable=False,
        ),
        Preset(
            "cls-one-stage",
            "one-stage-v1",
            ("classification",),
            "binary classification reward, <think><answer> format",
        ),
        Preset(
            "cls-multi-stage",
            "multi-stage-v1",
            ("classification",),
            "binary classification reward, <think><rethink><answer> format",
        ),
        Preset(
            "cls-random-multi-stage",
            "multi-stage-v1",
            ("classification", "random"),
            "classification + zero-mean Gaussian noise (RRP control), multi-stage",
        ),
        Preset(
            "cls-count-multi-stage",
            "multi-stage-v1",
            ("classification", "count"),
            "classification + box-count term (Eq. 4 without GIoU), multi-stage",
        ),
        Preset(
            "adfm",
            "multi-stage-v1",
            ("classification", "localization"),
            "AD-FM: classification + localization (GIoU + count / focus), multi-stage",
        ),
    )
}


def get_preset(name: str) -> Preset:
    """Look up a preset; a clear error lists the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}") from None
