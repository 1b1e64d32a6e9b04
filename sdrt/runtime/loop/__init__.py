"""The denoising loop: the generation modes' starts, the conditioning of each step, the
denoiser call, guidance and the steps."""
