"""`GgufVlm` with one addition: answering caller-given chat messages (MMAD's multiple-choice questions).

`adfm.appliance.vlm.GgufVlm.generate` renders only the inspection prompt of
`adfm.protocol.build_messages`. MMAD's questions are other messages over the same images, so this
subclass swaps in the caller's messages for one call and otherwise leaves everything — chat
template, image encoding, greedy/sampled decoding with vision tokens suppressed — to `GgufVlm`.

It overrides `GgufVlm._render`, a private method; when `GgufVlm` gains a public way to pass
messages, this module goes.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from adfm.appliance.vlm import Generation, GgufVlm
from adfm.protocol import to_image_url_messages

if TYPE_CHECKING:
    from PIL import Image


class MessagesVlm(GgufVlm):
    """A `GgufVlm` that can also answer messages with `{"type": "image"}` slots."""

    _local = threading.local()

    def generate_messages(
        self,
        messages: list[dict[str, Any]],
        images: Sequence[Image.Image],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        seed: int = 0,
    ) -> Generation:
        """Answer `messages` (image slots filled in order by `images`, already on their grids)."""
        self._local.messages = messages
        try:
            return self.generate(images, max_tokens=max_tokens, temperature=temperature, seed=seed)
        finally:
            self._local.messages = None

    def _render(self, n_images: int, urls: list[str], prompt_version: str | None, product: str | None) -> str:
        messages = getattr(self._local, "messages", None)
        if messages is None:
            return super()._render(n_images, urls, prompt_version, product)
        filled = to_image_url_messages(messages, urls)
        for msg in filled:  # as GgufVlm does: the projector's marker takes each image's place
            if isinstance(msg["content"], list):
                msg["content"] = [
                    {"type": "text", "text": self._marker} if b.get("type") == "image_url" else b
                    for b in msg["content"]
                ]
        return self._formatter(messages=filled).prompt
