"""Features that attach to the denoising loop or wrap a run: ControlNet, LoRA, DeepCache, the
SDXL refiner, hires fix, the masked area, previews."""
