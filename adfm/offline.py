"""Offline mode for every Hugging Face library, set in one place.

Every model path adfm reads is local; these variables make a stray hub lookup fail loudly instead
of reaching for the network. They are defaults: a value the user already set is kept.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

OFFLINE_ENV: Mapping[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
}


def force_offline() -> None:
    """Set the offline variables in this process (before transformers or datasets is imported)."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


def offline_env(base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """An environment for a child process: `base` (default: this process's) with offline mode on."""
    env = dict(os.environ if base is None else base)
    for key, value in OFFLINE_ENV.items():
        env.setdefault(key, value)
    env.update(extra)
    return env
