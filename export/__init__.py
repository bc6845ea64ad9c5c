"""adfm.export: merge a LoRA, write GGUF (language model + mmproj), quantize, verify, write a manifest.

`export_model` is the API; `adfm-export` (adfm.export.cli) is the command. Heavy libraries (torch,
transformers, peft, gguf, llama-cpp-python) are imported only when an export runs.
"""

from .errors import ExportError
from .pipeline import ExportConfig, export_model, run_export

__all__ = ["ExportConfig", "ExportError", "export_model", "run_export"]
