"""adfm.trainer.evaluation: the paper's protocols (`adfm-eval`).

- VLM evaluation on HF checkpoints (+ LoRA) and exported GGUF models: binary anomaly accuracy per
  dataset and category, balanced accuracy, precision/recall/F1, localization against the
  pseudo-boxes, MMAD's multiple-choice subtasks (`vlm_eval`, `backends`, `mmad`, `vlm_metrics`).
- Score-based models (the screening gate or any per-image scorer): AUROC, F1-max, accuracy at a
  fixed and at the Youden-J threshold (`metrics`, `scores`).
- Reports: results JSON, markdown tables, PNG plots (`report`).
"""
