"""Write a diffusers Stable Diffusion 1.x/2.x pipeline as a single-file checkpoint in the
original (LDM / CompVis, AUTOMATIC1111) layout, the format people download as one
`.safetensors` file.

sdrt reads such files through diffusers' `from_single_file`; this writer exists so that path
can be tested on models built here (no checkpoint can be downloaded). It is the inverse of
diffusers' key conversion: UNet blocks become `input_blocks` / `middle_block` /
`output_blocks`, the VAE's become `down` / `mid` / `up` (the decoder's up blocks in reverse
order, attention projections as 1x1 convolutions), and the text encoder keeps its keys under
`cond_stage_model.transformer.`.

SDXL checkpoints (Stability's `sgm` layout) put the UNet's added embedding at `label_emb` and the
text encoders under `conditioner.embedders.N.`: CLIP ViT-L with its Hugging Face names
(`transformer.`), OpenCLIP bigG with OpenCLIP's (`model.`: `resblocks`, one packed `in_proj`
for q, k and v, the projection as a [width, projection] matrix). The refiner has only bigG, as
embedder 0.
"""

from __future__ import annotations

import re
from pathlib import Path

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer."
TEXT_MODEL = "text_model"

SDXL_EMBEDDER = "conditioner.embedders.{}."
UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
OPEN_CLIP_TOP = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}
OPEN_CLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}
PACKED_PROJECTIONS = ("q_proj", "k_proj", "v_proj")  # OpenCLIP's in_proj rows, in this order
UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
VAE_TOP = {"conv_norm_out": "norm_out"}


def _renamed(rest: str, table: dict[str, str]) -> str:
    for old, new in table.items():
        if rest == old or rest.startswith(old + "."):
            return new + rest[len(old) :]
    return rest


def unet_key(key: str, layers_per_block: int, blocks_with_attention: set[int]) -> str:
    """The LDM name of a diffusers UNet2DConditionModel parameter."""
    per_block = layers_per_block + 1
    for old, new in UNET_TOP.items():
        if key.startswith(old + "."):
            return new + key[len(old) :]
    if match := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, kind, layer, rest = int(match[1]), match[2], int(match[3]), match[4]
        index = block * per_block + layer + 1
        if kind == "resnets":
            return f"input_blocks.{index}.0.{_renamed(rest, UNET_RESNET)}"
        return f"input_blocks.{index}.1.{rest}"
    if match := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{(int(match[1]) + 1) * per_block}.0.op.{match[2]}"
    if match := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"middle_block.{2 * int(match[1])}.{_renamed(match[2], UNET_RESNET)}"
    if match := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{match[1]}"
    if match := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, kind, layer, rest = int(match[1]), match[2], int(match[3]), match[4]
        index = block * per_block + layer
        if kind == "resnets":
            return f"output_blocks.{index}.0.{_renamed(rest, UNET_RESNET)}"
        return f"output_blocks.{index}.1.{rest}"
    if match := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        block = int(match[1])
        slot = 2 if block in blocks_with_attention else 1
        return f"output_blocks.{block * per_block + layers_per_block}.{slot}.conv.{match[2]}"
    raise ValueError(f"no LDM name for UNet parameter {key}")


def _vae_resnet(rest: str) -> str:
    return rest.replace("conv_shortcut", "nin_shortcut")


def vae_key(key: str, up_blocks: int) -> str:
    """The LDM name of a diffusers AutoencoderKL parameter."""
    if match := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"{match[1]}.mid.block_{int(match[2]) + 1}.{_vae_resnet(match[3])}"
    if match := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", key):
        return f"{match[1]}.mid.attn_1.{_renamed(match[2], VAE_ATTENTION)}"
    if match := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"encoder.down.{match[1]}.block.{match[2]}.{_vae_resnet(match[3])}"
    if match := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"encoder.down.{match[1]}.downsample.conv.{match[2]}"
    if match := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        block = up_blocks - 1 - int(match[1])
        return f"decoder.up.{block}.block.{match[2]}.{_vae_resnet(match[3])}"
    if match := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        return f"decoder.up.{up_blocks - 1 - int(match[1])}.upsample.conv.{match[2]}"
    if match := re.fullmatch(r"(encoder|decoder)\.(conv_norm_out)\.(.+)", key):
        return f"{match[1]}.{VAE_TOP[match[2]]}.{match[3]}"
    if re.fullmatch(r"(encoder|decoder)\.(conv_in|conv_out)\..+|(post_)?quant_conv\..+", key):
        return key
    raise ValueError(f"no LDM name for VAE parameter {key}")


def _without_text_model(key: str) -> str:
    return key[len(TEXT_MODEL) + 1 :] if key.startswith(TEXT_MODEL + ".") else key


def open_clip_state(text_encoder) -> dict:
    """A CLIPTextModelWithProjection's weights under OpenCLIP's names."""
    import torch

    state, packed = {}, {}
    for key, tensor in text_encoder.state_dict().items():
        if key == "text_projection.weight":
            state["text_projection"] = tensor.T
            continue
        key = _without_text_model(key)
        if key in OPEN_CLIP_TOP:
            state[OPEN_CLIP_TOP[key]] = tensor
            continue
        match = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key)
        if match is None:
            raise ValueError(f"no OpenCLIP name for text encoder parameter {key}")
        layer, module, kind = match[1], match[2], match[3]
        if module.startswith("self_attn.") and module.split(".")[-1] in PACKED_PROJECTIONS:
            packed.setdefault((layer, kind), {})[module.split(".")[-1]] = tensor
            continue
        state[f"transformer.resblocks.{layer}.{_renamed(module, OPEN_CLIP_LAYER)}.{kind}"] = tensor
    for (layer, kind), parts in packed.items():
        state[f"transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat([parts[p] for p in PACKED_PROJECTIONS])
    return state


def _text_encoder_state(pipeline) -> dict:
    """SD 1.x/2.x: one CLIP text model; SDXL: its embedders (see the module docstring)."""
    if getattr(pipeline, "text_encoder_2", None) is None:
        return {
            TEXT_PREFIX + f"{TEXT_MODEL}.{_without_text_model(key)}": tensor
            for key, tensor in pipeline.text_encoder.state_dict().items()
        }
    state, index = {}, 0
    if pipeline.text_encoder is not None:
        for key, tensor in pipeline.text_encoder.state_dict().items():
            state[SDXL_EMBEDDER.format(0) + f"transformer.{TEXT_MODEL}.{_without_text_model(key)}"] = tensor
        index = 1
    for key, tensor in open_clip_state(pipeline.text_encoder_2).items():
        state[SDXL_EMBEDDER.format(index) + "model." + key] = tensor
    return state


def ldm_state_dict(pipeline) -> dict:
    """The pipeline's UNet, VAE and text encoder weights under their LDM names."""
    unet_config = pipeline.unet.config
    with_attention = {index for index, kind in enumerate(unet_config.up_block_types) if "CrossAttn" in kind}
    state = {}
    for key, tensor in pipeline.unet.state_dict().items():
        state[UNET_PREFIX + unet_key(key, unet_config.layers_per_block, with_attention)] = tensor
    up_blocks = len(pipeline.vae.config.up_block_types)
    for key, tensor in pipeline.vae.state_dict().items():
        name = vae_key(key, up_blocks)
        if ".mid.attn_1." in name and name.endswith("weight") and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]  # LDM's attention projections are 1x1 convolutions
        state[VAE_PREFIX + name] = tensor
    # Real checkpoints name CLIP's weights text_model.*; transformers 5 drops that prefix.
    state.update(_text_encoder_state(pipeline))
    return state


def save_ldm_checkpoint(pipeline, path: str | Path) -> Path:
    """Writes `ldm_state_dict(pipeline)` as one .safetensors file."""
    from safetensors.torch import save_file

    path = Path(path)
    save_file({key: tensor.contiguous() for key, tensor in ldm_state_dict(pipeline).items()}, str(path))
    return path


CONTROLNET_PREFIX = "control_model."


def controlnet_key(key: str, layers_per_block: int, hint_blocks: int) -> str:
    """The LDM name of a diffusers ControlNetModel parameter (the original ControlNet layout:
    the UNet's down half, `input_hint_block` for the conditioning embedding, one `zero_convs`
    per residual and `middle_block_out`)."""
    if match := re.fullmatch(r"controlnet_cond_embedding\.(conv_in|conv_out|blocks\.(\d+))\.(.+)", key):
        position = {"conv_in": 0, "conv_out": hint_blocks + 1}.get(match[1], int(match[2] or 0) + 1)
        return f"input_hint_block.{2 * position}.{match[3]}"  # SiLUs sit between the convolutions
    if match := re.fullmatch(r"controlnet_down_blocks\.(\d+)\.(.+)", key):
        return f"zero_convs.{match[1]}.0.{match[2]}"
    if match := re.fullmatch(r"controlnet_mid_block\.(.+)", key):
        return f"middle_block_out.0.{match[1]}"
    return unet_key(key, layers_per_block, set())


def save_ldm_controlnet(controlnet, path: str | Path) -> Path:
    """Writes a diffusers ControlNetModel as one .safetensors file in the original layout (what
    A1111 users keep in models/ControlNet)."""
    from safetensors.torch import save_file

    hint_blocks = len(controlnet.controlnet_cond_embedding.blocks)
    state = {
        CONTROLNET_PREFIX + controlnet_key(key, controlnet.config.layers_per_block, hint_blocks): tensor.contiguous()
        for key, tensor in controlnet.state_dict().items()
    }
    path = Path(path)
    save_file(state, str(path))
    return path
