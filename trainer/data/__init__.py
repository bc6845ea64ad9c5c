"""Datasets in their native layouts, pseudo-boxes from masks, split manifests, the training view.

- `scan_dataset(root)`: detect the layout and read it into `Sample` records (`layouts/`).
- `pseudo_boxes(mask)`: the paper's boxes from an anomaly mask (`boxes.py`).
- `check_samples(...)`: open every file, report problems naming the file, compute boxes (`check.py`).
- `make_split(...)`: the multi-domain / cross-dataset splits as JSONL manifests (`splits.py`).
- `assign_references(...)`: the single normal reference per query (`references.py`).
"""

from adfm.trainer.data.boxes import DEFAULT_MIN_AREA, BoxConfig, grid_cell_kernel, pseudo_boxes
from adfm.trainer.data.check import Checked, check_samples
from adfm.trainer.data.imageio import DataFileError, read_mask
from adfm.trainer.data.layouts import LAYOUTS, Detection, Problem, Scan, Skipped, detect_layout, scan_dataset
from adfm.trainer.data.records import Sample, iter_manifest, read_manifest, write_manifest
from adfm.trainer.data.references import assign_references
from adfm.trainer.data.splits import DatasetSource, SplitConfig, SplitResult, make_split

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
