"""Export: Stable Diffusion models to ONNX engines (needs the `export` extra: torch, diffusers)."""
