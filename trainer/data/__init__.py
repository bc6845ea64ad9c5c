"""Datasets in their native layouts, pseudo-boxes from masks, split manifests, the training view."""

from adfm.trainer.data.records import Sample, read_manifest, write_manifest

__all__ = ["Sample", "read_manifest", "write_manifest"]
