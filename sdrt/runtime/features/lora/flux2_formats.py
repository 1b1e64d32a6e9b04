"""FLUX.2's BFL layer names -> diffusers' Flux2Transformer2DModel modules, as diffusers 0.42's
Flux2LoraLoaderMixin.lora_state_dict converts them (loaders/lora_conversion_utils.py:
`_convert_non_diffusers_flux2_lora_to_diffusers` for ai-toolkit's `diffusion_model.` + dotted
BFL names with lora_A/B or lora_down/up, PEFT's `base_model.model.` renamed to it first;
`_convert_kohya_flux2_lora_to_diffusers` for kohya's `lora_unet_` + flattened names with alpha).
The renaming rules are FLUX.1's (flux_formats.py); only the tables differ:

- a double block's MLPs are `ff.linear_in` / `ff.linear_out` (FLUX.1: `ff.net.0.proj` / `ff.net.2`)
  and its modulation is shared by all blocks (no per-block `img_mod`);
- a single block's linear1 is one fused module, `attn.to_qkv_mlp_proj` (no split), linear2 is
  `attn.to_out`;
- the outer layers include the shared modulations; the final layer's modulation is mapped as it
  is, without FLUX.1's (shift, scale) swap, as diffusers' FLUX.2 converter maps it.

diffusers' kohya converter maps only img_in, txt_in, time_in and final_layer.linear outside the
blocks (the others it warns about and drops); sdrt maps the BFL converter's whole table for both,
as it does for FLUX.1 (docs/lora.md).
"""

from __future__ import annotations

from sdrt.runtime.features.lora.flux_formats import ADDED_QKV, FLUX1, QKV, BflLayout

FLUX2 = BflLayout(
    "flux2",
    double={
        "img_attn_proj": ("attn.to_out.0",),
        "img_attn_qkv": QKV,
        "img_mlp_0": ("ff.linear_in",),
        "img_mlp_2": ("ff.linear_out",),
        "txt_attn_proj": ("attn.to_add_out",),
        "txt_attn_qkv": ADDED_QKV,
        "txt_mlp_0": ("ff_context.linear_in",),
        "txt_mlp_2": ("ff_context.linear_out",),
    },
    single={"linear1": ("attn.to_qkv_mlp_proj",), "linear2": ("attn.to_out",)},
    outer={
        "img_in": "x_embedder",
        "txt_in": "context_embedder",
        "time_in_in_layer": "time_guidance_embed.timestep_embedder.linear_1",
        "time_in_out_layer": "time_guidance_embed.timestep_embedder.linear_2",
        "guidance_in_in_layer": "time_guidance_embed.guidance_embedder.linear_1",
        "guidance_in_out_layer": "time_guidance_embed.guidance_embedder.linear_2",
        "final_layer_linear": "proj_out",
        "final_layer_adaLN_modulation_1": "norm_out.linear",
        "single_stream_modulation_lin": "single_stream_modulation.linear",
        "double_stream_modulation_img_lin": "double_stream_modulation_img.linear",
        "double_stream_modulation_txt_lin": "double_stream_modulation_txt.linear",
    },
)

#: Layout name (a family's `lora_bfl_layout`) -> its tables: the one list of BFL layouts.
BFL_LAYOUTS = {layout.name: layout for layout in (FLUX1, FLUX2)}
