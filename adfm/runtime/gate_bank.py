"""The gate graph's memory bank: its layout inside the ONNX graph, its search matrix and its hash.

One module defines what the trainer writes and what the line rewrites, so a bank changed on the
station (`gate_learning`) is laid out exactly as a freshly trained one:

- `bank` (K×C float32): the normal patch features; the distance of a patch to its nearest normal
  patch is computed against these rows directly (the expanded form cancels badly in float32 for
  near neighbours).
- `bank_proj` (C×d float32, optional): a projection fixed at fitting time; the nearest row is
  searched in these d dimensions instead of C (a smaller matrix product per frame).
- `bank_search` ((d+1)×K float32): `[-2·Zᵀ; |Z|²]` with Z = bank·proj (or the bank itself). A
  patch's projection z, with a 1 appended, times this matrix is |m|² − 2z·m for every bank row m,
  whose argmin is the nearest row: one matrix product, no separate subtraction pass over N×K.

The bank's hash (`bank_digest`) names a bank in results and in the learning history; it is the
sha256 of the float32 rows, so the same rows always give the same hash.
"""

from __future__ import annotations

import hashlib

import numpy as np

BANK = "bank"
BANK_PROJ = "bank_proj"
BANK_SEARCH = "bank_search"
#: The graph output with every patch's feature (N×hw×C), used to add patches to the bank.
PATCH_OUTPUT = "patch_features"


class BankError(ValueError):
    """A bank or projection of the wrong shape or with non-finite values; the message says which."""


def as_bank(rows: np.ndarray, name: str = BANK) -> np.ndarray:
    """`rows` as a C-contiguous float32 K×C array of finite values."""
    a = np.ascontiguousarray(rows, dtype=np.float32)
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
        raise BankError(f"{name} must be K×C with K, C ≥ 1; got shape {a.shape}")
    if not np.isfinite(a).all():
        raise BankError(f"{name} has non-finite values")
    return a


def search_matrix(bank: np.ndarray, proj: np.ndarray | None = None) -> np.ndarray:
    """The (d+1)×K matrix `[-2·Zᵀ; |Z|²]`, Z = bank·proj (bank when proj is None); see the module doc."""
    bank = as_bank(bank)
    z = bank.astype(np.float64)
    if proj is not None:
        proj = np.asarray(proj, dtype=np.float64)
        if proj.ndim != 2 or proj.shape[0] != bank.shape[1]:
            raise BankError(f"{BANK_PROJ} must be C×d with C = {bank.shape[1]}; got shape {proj.shape}")
        z = z @ proj
    out = np.concatenate([-2.0 * z.T, (z * z).sum(1)[None, :]], axis=0)
    return np.ascontiguousarray(out, dtype=np.float32)


def pca_projection(bank: np.ndarray, dim: int) -> np.ndarray:
    """C×dim projection onto the bank's `dim` leading principal directions (orthonormal columns).

    Why PCA and not a random projection: the nearest-row search in d dimensions picks a row that
    is near in the full space only if the dropped directions carry little of the bank's spread.
    """
    bank = as_bank(bank)
    if not 1 <= dim <= bank.shape[1]:
        raise BankError(f"search dimension must be 1…{bank.shape[1]}, got {dim}")
    x = bank.astype(np.float64)
    _, _, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    return np.ascontiguousarray(vt[:dim].T, dtype=np.float32)


def bank_digest(bank: np.ndarray) -> str:
    """sha256 of the bank's float32 rows (shape included), hex."""
    bank = as_bank(bank)
    h = hashlib.sha256(f"{bank.shape[0]}x{bank.shape[1]}:".encode())
    h.update(bank.astype("<f4", copy=False).tobytes())
    return h.hexdigest()


def nearest_distances(features: np.ndarray, bank: np.ndarray) -> np.ndarray:
    """Exact Euclidean distance of each row of `features` (P×C) to its nearest bank row (float64)."""
    f = np.asarray(features, dtype=np.float64)
    b = as_bank(bank).astype(np.float64)
    d2 = (f * f).sum(1)[:, None] - 2.0 * f @ b.T + (b * b).sum(1)[None, :]
    nearest = np.argmin(d2, axis=1)
    diff = f - b[nearest]
    return np.sqrt((diff * diff).sum(1))
