"""adfm.trainer: datasets, pseudo-boxes, splits, rewards, GRPO training, the screening gate, evaluation.

Runs in the datacenter; needs the `trainer` extra (torch, transformers, peft, trl).
"""
