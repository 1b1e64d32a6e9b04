"""The k-diffusion sampler family: A1111's and ComfyUI's samplers as `k_diffusion.sampling`
computes them, beside the diffusers-equal samplers of sdrt.runtime.schedulers (which it does not
change). model_sigmas: the model's sigma table; schedules: A1111's schedule types (+
beta_quantile for "Beta"); solvers: the sampler loops as coroutines; sampler: the loop's
interface over them; dpm_fast: DPM-Solver-Fast; dpm_adaptive: the adaptive DPM-Solver (its calls laid
out as it runs); lcm: A1111's LCM and its denoiser; family: the samplers A1111 offers and their names; brownian: the SDE
samplers' Brownian tree."""
