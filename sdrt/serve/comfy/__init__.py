"""ComfyUI's HTTP and websocket API on `sdrt serve`: API-format workflows validated and run as
ComfyUI runs them (nodes in dependency order, unchanged nodes' results reused across prompts),
with ComfyUI's queue, history, images and messages.

nodes.py      the node registry (inputs, outputs, choices): the one source of /object_info
values.py     what flows along a workflow's links (model, CLIP, VAE, conditioning, latent, image)
sd_nodes.py   the nodes' implementations on an sdrt Pipeline
sampler_nodes.py KSampler and KSamplerAdvanced (ComfyUI's samplers and rules)
image_nodes.py the resampling nodes (LatentUpscale, ImageScale, ...)
mask_nodes.py  LoadImageMask, SetLatentNoiseMask, VAEEncodeForInpaint
control_nodes.py ControlNetLoader, ControlNetApply, ControlNetApplyAdvanced (ComfyUI's rules)
graph.py      validation (ComfyUI's error body) and the execution order
runner.py     the prompt queue, history and the events a run sends
routes.py     the routes and the websocket
"""
