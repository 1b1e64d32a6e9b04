"""The inference runtime. Nothing here imports torch, transformers, diffusers or scipy."""
