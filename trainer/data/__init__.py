"""Datasets in their native layouts, pseudo-boxes from masks, split manifests, the training view.

- `scan_dataset(root)`: detect the layout and read it into `Sample` records (`layouts/`).
- `pseudo_boxes(mask)`: the paper's boxes from an anomaly mask (`boxes.py`).
- `check_samples(...)`: open every file, report problems naming the file, compute boxes (`check.py`).
- `make_split(...)`: the multi-domain / cross-dataset splits as JSONL manifests (`splits.py`).
- `assign_references(...)`: the single normal reference per query (`references.py`).
"""

from .boxes import DEFAULT_MIN_AREA, BoxConfig, grid_cell_kernel, pseudo_boxes
from .check import Checked, check_samples
from .imageio import DataFileError, read_mask
from .layouts import LAYOUTS, Detection, Problem, Scan, Skipped, detect_layout, scan_dataset
from .records import Sample, iter_manifest, read_manifest, write_manifest
from .references import assign_references
from .splits import DatasetSource, SplitConfig, SplitResult, make_split

__all__ = [
    "DEFAULT_MIN_AREA",
    "LAYOUTS",
    "BoxConfig",
    "Checked",
    "DataFileError",
    "DatasetSource",
    "Detection",
    "Problem",
    "Sample",
    "Scan",
    "Skipped",
    "SplitConfig",
    "SplitResult",
    "assign_references",
    "check_samples",
    "detect_layout",
    "grid_cell_kernel",
    "iter_manifest",
    "make_split",
    "pseudo_boxes",
    "read_manifest",
    "read_mask",
    "scan_dataset",
    "write_manifest",
]
