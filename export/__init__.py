"""adfm.export: merge a LoRA, write GGUF (language model + mmproj), quantize, verify, write a manifest."""
