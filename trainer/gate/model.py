"""The gate's model: nearest-neighbour distance of image patches to a memory bank of normal patches.

Two feature spaces, one scorer (PatchCore's: a coreset memory bank, the distance of each patch to
its nearest normal patch, the image score the highest patch distance):
- `pretrained` (the default): ImageNet EfficientNet-Lite0 stride-8/16 features with 3×3 local
  aggregation (`backbone.PretrainedFeatures`). On real images pretrained features separate
  defects from normal variation far better than random ones (issue 16: image AUROC about 0.93
  against 0.6–0.7 for random weights on the same photos; bench/gate_compare.py measures it on the
  texture proxy and the synthetic station).
- `random`: three seeded random 3×3 stride-2 convolutions with |x| (below): no weights at all,
  enough for synthetic stations; kept as the comparison and as a fallback where the weights
  package is not installed.

Why a patch memory bank (and not an autoencoder or a distillation network): it needs no gradient
training, works from the few normal images a new station has (tens, not thousands) and fits in
seconds to a minute on a CPU — one forward pass per image plus a greedy k-centre coreset of the
patch features. A station with several part variants is fine: nearest neighbours are multimodal.
The whole path — normalization, features, distances, smoothing, image score (max of the map) and
the heat map upsampled to the input size — is one ONNX graph; the bank size sets the line's
frame rate (matrix product of the image's patches against the bank).
For the random features: a convolutional autoencoder tried on the synthetic stations scored thin
scratches below the normal texture's reconstruction error; ReLU instead of |x| made the random
features depend on the seed (image AUROC 0.84–0.97 over four seeds, 0.96–1.0 with |x|).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from adfm.runtime.gate_bank import BANK, BANK_PROJ, BANK_SEARCH, as_bank, pca_projection, search_matrix

METHODS = {"pretrained": "patch-knn-pretrained-features", "random": "patch-knn-random-features"}


class RandomFeatures(nn.Module):
    """Three seeded random 3×3 stride-2 convolutions with |x|; features at 1/8 of the input size.

    The output concatenates the three scales (width, 2·width, 4·width channels), max-pooled to
    the coarsest grid so a thin line seen by the fine layer survives, then averaged over 3×3
    neighbouring cells so each cell describes a neighbourhood, not one position.
    """

    def __init__(self, width: int = 16, seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.conv1 = nn.Conv2d(3, width, 3, stride=2, padding=1)
            self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
            self.conv3 = nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1)
        self.requires_grad_(False)
        self.channels = 7 * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.abs(self.conv1(x))
        b = torch.abs(self.conv2(a))
        c = torch.abs(self.conv3(b))
        f = torch.cat([F.max_pool2d(a, 4), F.max_pool2d(b, 2), c], dim=1)
        return F.avg_pool2d(f, 3, stride=1, padding=1, count_include_pad=False)


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """A normalized 2-D Gaussian (1×1×k×k), k = 2·ceil(3σ)+1; σ = 0 gives the identity."""
    if sigma <= 0:
        return torch.ones(1, 1, 1, 1)
    r = max(1, math.ceil(3 * sigma))
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


class PatchKNNGate(nn.Module):
    """RGB 0–255 N×3×H×W in; (score N, heat map N×H×W, patch features N×hw×C) out — the graph
    exported to ONNX. The bank's layout in the graph is `adfm.runtime.gate_bank`'s (shared with
    the line, which rewrites it when operators confirm false alarms).

    `search_dim`: the nearest bank row is searched in the bank's `search_dim` leading principal
    directions (one smaller matrix product per frame); the distance to that row is then exact, in
    all C channels. None or 0 searches all C channels (the exact nearest neighbour).
    """

    def __init__(
        self,
        features: nn.Module,
        mean: torch.Tensor,
        std: torch.Tensor,
        bank: torch.Tensor,
        input_hw: tuple[int, int],
        smoothing_sigma: float = 1.0,
        search_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.features = features
        self.input_hw = (int(input_hw[0]), int(input_hw[1]))
        self.register_buffer("mean", mean.reshape(1, 3, 1, 1).float().clone())
        self.register_buffer("inv_std", (1.0 / std).reshape(1, 3, 1, 1).float().clone())
        rows = bank.detach().cpu().float().numpy()
        proj = None
        if search_dim and search_dim < rows.shape[1] and rows.shape[0] > 1:
            proj = pca_projection(rows, search_dim)
        self.register_buffer(BANK, torch.from_numpy(as_bank(rows)).clone())  # K×C
        self.register_buffer(BANK_PROJ, None if proj is None else torch.from_numpy(proj))  # C×d
        self.register_buffer(BANK_SEARCH, torch.from_numpy(search_matrix(rows, proj)))  # (d+1)×K
        kernel = gaussian_kernel(smoothing_sigma)
        self.register_buffer("kernel", kernel)
        self.pad = (kernel.shape[-1] - 1) // 2

    @property
    def bank_size(self) -> int:
        return int(self.bank.shape[0])

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        """Patch features N×C×h×w of raw RGB 0–255 images."""
        return self.features((image - self.mean) * self.inv_std)

    def patch_map(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(distance of every patch to its nearest normal patch, smoothed: N×1×h×w; patches N×hw×C)."""
        f = self.embed(image)
        n, _, h, w = f.shape
        q = f.flatten(2).transpose(1, 2)  # N×hw×C
        z = q if self.bank_proj is None else torch.matmul(q, self.bank_proj)
        z1 = torch.cat([z, torch.ones_like(z[..., :1])], dim=-1)
        # argmin of |m|² − 2z·m over bank rows m, as one product (gate_bank.search_matrix); then
        # the distance to that row directly: the expanded form cancels badly in float32.
        nearest = torch.argmin(torch.matmul(z1, self.bank_search), dim=-1)  # N×hw
        diff = q - self.bank[nearest]
        d = torch.sqrt((diff * diff).sum(-1)).reshape(n, 1, h, w)
        if self.pad:
            d = F.conv2d(F.pad(d, (self.pad,) * 4, mode="replicate"), self.kernel)
        return d, q

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        d, q = self.patch_map(image)
        score = d.amax(dim=(1, 2, 3))
        heat = F.interpolate(d, size=self.input_hw, mode="bilinear", align_corners=False)[:, 0]
        return score, heat, q


def greedy_coreset(
    x: torch.Tensor, k: int, projection_dim: int, generator: torch.Generator, progress: bool = False
) -> torch.Tensor:
    """Indices of `k` rows of `x` chosen by greedy k-centre (each pick is the row farthest from those
    picked so far), measured on a random projection to `projection_dim` dimensions for speed."""
    n, c = x.shape
    if n <= k:
        return torch.arange(n, device=x.device)
    from tqdm import tqdm

    z = x
    if projection_dim < c:
        proj = torch.randn(c, projection_dim, generator=generator) / math.sqrt(projection_dim)
        z = x @ proj.to(x.device)
    sq = (z * z).sum(1)
    start = int(torch.randint(n, (1,), generator=generator))
    picked = [torch.tensor(start, device=x.device)]
    nearest = torch.clamp(sq - 2.0 * (z @ z[start]) + sq[start], min=0.0)
    with _threads_for(x.device, n * z.shape[1]):
        for _ in tqdm(range(k - 1), desc="coreset", unit="patch", disable=not progress, leave=False,
                      mininterval=0.5):
            j = torch.argmax(nearest)  # stays on the device: no sync per pick
            picked.append(j)
            torch.minimum(nearest, sq - 2.0 * (z @ z[j]) + sq[j], out=nearest)
    return torch.stack(picked)


@contextmanager
def _threads_for(device: torch.device, elements: int) -> Iterator[None]:
    """Few CPU threads for the coreset's thousands of small matrix-vector products: on a busy
    machine, extra threads wait for each other longer than they compute (8x slower seen on 2 cores)."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(before, elements // 4_000_000)))
    try:
        yield
    finally:
        torch.set_num_threads(before)
