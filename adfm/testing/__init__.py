"""Offline fixtures for tests, the demo and benchmarks: a tiny random Qwen2.5-VL and synthetic data.

`synthetic` needs only numpy and pillow; `tiny_model` needs the trainer extra (torch, transformers).
"""
