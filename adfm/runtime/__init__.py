"""Runtimes of exported artefacts, torch-free: the llama.cpp VLM (`vlm`) and the ONNX gate (`gate`).

The line (appliance), export verification and evaluation all run models through these modules, so
an artefact behaves the same wherever it runs. Heavy imports (llama_cpp, onnxruntime) happen inside
the functions that need them.
"""
