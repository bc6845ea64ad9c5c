"""adfm: AD-FM visual inspection.

Layers, from the bottom (import-linter checks them; see `.importlinter`):
- contracts, light (numpy, scipy, pillow, pydantic): protocol, geometry, schema, manifest, files,
  config, offline, synthetic;
- `adfm.runtime` (runs exported artefacts: llama.cpp VLM, ONNX gate) and `adfm.camera`;
- `adfm.appliance` (the line PC), beside the build side `adfm.export` and `adfm.trainer`.
The line side never imports torch or the build side. The subpackages live in the repository's
top-level folders (`appliance/` is `adfm.appliance`); `adfm/<folder>` links to each, so editors
and type checkers resolve `adfm.*` from a checkout.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("adfm")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"
