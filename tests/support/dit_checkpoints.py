"""Write a diffusers FLUX.1 / SD3 transformer's weights in the original single-file key layout
(Black Forest Labs' `flux/model.py`, Stability's `sd3/mmditx.py`), written here as the inverse of
diffusers' `convert_flux_transformer_checkpoint_to_diffusers` / `convert_sd3_...` so that sdrt's
single-file path can be tested on the tiny random models (no real checkpoint can be downloaded)."""

from __future__ import annotations

import re

import torch

QKV = ("to_q", "to_k", "to_v")
ADDED_QKV = ("add_q_proj", "add_k_proj", "add_v_proj")


def _swap_halves(tensor):
    """Original adaLN outputs are (shift, scale); diffusers' AdaLayerNormContinuous (scale, shift)."""
    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def _fuse(state, prefix, parts, kind):
    return torch.cat([state.pop(f"{prefix}{part}.{kind}") for part in parts], dim=0)


def _rename(state, out, table):
    """Move every key of `state` matching a table pattern to its original name in `out`."""
    for key in list(state):
        for pattern, target in table:
            match = re.fullmatch(pattern, key)
            if match:
                out[match.expand(target)] = state.pop(key)
                break


FLUX_NAMES = [
    (r"time_text_embed\.timestep_embedder\.linear_1\.(\w+)", r"time_in.in_layer.\1"),
    (r"time_text_embed\.timestep_embedder\.linear_2\.(\w+)", r"time_in.out_layer.\1"),
    (r"time_text_embed\.text_embedder\.linear_1\.(\w+)", r"vector_in.in_layer.\1"),
    (r"time_text_embed\.text_embedder\.linear_2\.(\w+)", r"vector_in.out_layer.\1"),
    (r"time_text_embed\.guidance_embedder\.linear_1\.(\w+)", r"guidance_in.in_layer.\1"),
    (r"time_text_embed\.guidance_embedder\.linear_2\.(\w+)", r"guidance_in.out_layer.\1"),
    (r"context_embedder\.(\w+)", r"txt_in.\1"),
    (r"x_embedder\.(\w+)", r"img_in.\1"),
    (r"transformer_blocks\.(\d+)\.norm1\.linear\.(\w+)", r"double_blocks.\1.img_mod.lin.\2"),
    (r"transformer_blocks\.(\d+)\.norm1_context\.linear\.(\w+)", r"double_blocks.\1.txt_mod.lin.\2"),
    (r"transformer_blocks\.(\d+)\.attn\.norm_q\.weight", r"double_blocks.\1.img_attn.norm.query_norm.scale"),
    (r"transformer_blocks\.(\d+)\.attn\.norm_k\.weight", r"double_blocks.\1.img_attn.norm.key_norm.scale"),
    (r"transformer_blocks\.(\d+)\.attn\.norm_added_q\.weight", r"double_blocks.\1.txt_attn.norm.query_norm.scale"),
    (r"transformer_blocks\.(\d+)\.attn\.norm_added_k\.weight", r"double_blocks.\1.txt_attn.norm.key_norm.scale"),
    (r"transformer_blocks\.(\d+)\.ff\.net\.0\.proj\.(\w+)", r"double_blocks.\1.img_mlp.0.\2"),
    (r"transformer_blocks\.(\d+)\.ff\.net\.2\.(\w+)", r"double_blocks.\1.img_mlp.2.\2"),
    (r"transformer_blocks\.(\d+)\.ff_context\.net\.0\.proj\.(\w+)", r"double_blocks.\1.txt_mlp.0.\2"),
    (r"transformer_blocks\.(\d+)\.ff_context\.net\.2\.(\w+)", r"double_blocks.\1.txt_mlp.2.\2"),
    (r"transformer_blocks\.(\d+)\.attn\.to_out\.0\.(\w+)", r"double_blocks.\1.img_attn.proj.\2"),
    (r"transformer_blocks\.(\d+)\.attn\.to_add_out\.(\w+)", r"double_blocks.\1.txt_attn.proj.\2"),
    (r"single_transformer_blocks\.(\d+)\.norm\.linear\.(\w+)", r"single_blocks.\1.modulation.lin.\2"),
    (r"single_transformer_blocks\.(\d+)\.attn\.norm_q\.weight", r"single_blocks.\1.norm.query_norm.scale"),
    (r"single_transformer_blocks\.(\d+)\.attn\.norm_k\.weight", r"single_blocks.\1.norm.key_norm.scale"),
    (r"single_transformer_blocks\.(\d+)\.proj_out\.(\w+)", r"single_blocks.\1.linear2.\2"),
    (r"proj_out\.(\w+)", r"final_layer.linear.\1"),
]


def flux_original_state_dict(transformer, prefix: str = "") -> dict:
    """BFL names: fused qkv per stream, single blocks' q, k, v and MLP input in one `linear1`."""
    state, out = dict(transformer.state_dict()), {}
    for kind in ("weight", "bias"):
        for i in range(len(transformer.transformer_blocks)):
            block = f"transformer_blocks.{i}.attn."
            out[f"double_blocks.{i}.img_attn.qkv.{kind}"] = _fuse(state, block, QKV, kind)
            out[f"double_blocks.{i}.txt_attn.qkv.{kind}"] = _fuse(state, block, ADDED_QKV, kind)
        for i in range(len(transformer.single_transformer_blocks)):
            block = f"single_transformer_blocks.{i}."
            parts = [f"attn.{name}" for name in QKV] + ["proj_mlp"]
            out[f"single_blocks.{i}.linear1.{kind}"] = _fuse(state, block, parts, kind)
        out[f"final_layer.adaLN_modulation.1.{kind}"] = _swap_halves(state.pop(f"norm_out.linear.{kind}"))
    _rename(state, out, FLUX_NAMES)
    assert not state, f"no original name for {sorted(state)}"
    return {prefix + key: value.contiguous() for key, value in out.items()}


SD3_NAMES = [
    (r"pos_embed\.pos_embed", r"pos_embed"),
    (r"pos_embed\.proj\.(\w+)", r"x_embedder.proj.\1"),
    (r"time_text_embed\.timestep_embedder\.linear_1\.(\w+)", r"t_embedder.mlp.0.\1"),
    (r"time_text_embed\.timestep_embedder\.linear_2\.(\w+)", r"t_embedder.mlp.2.\1"),
    (r"time_text_embed\.text_embedder\.linear_1\.(\w+)", r"y_embedder.mlp.0.\1"),
    (r"time_text_embed\.text_embedder\.linear_2\.(\w+)", r"y_embedder.mlp.2.\1"),
    (r"context_embedder\.(\w+)", r"context_embedder.\1"),
    (r"transformer_blocks\.(\d+)\.attn\.norm_(q|k)\.weight", r"joint_blocks.\1.x_block.attn.ln_\2.weight"),
    (r"transformer_blocks\.(\d+)\.attn\.norm_added_(q|k)\.weight", r"joint_blocks.\1.context_block.attn.ln_\2.weight"),
    (r"transformer_blocks\.(\d+)\.attn2\.norm_(q|k)\.weight", r"joint_blocks.\1.x_block.attn2.ln_\2.weight"),
    (r"transformer_blocks\.(\d+)\.attn\.to_out\.0\.(\w+)", r"joint_blocks.\1.x_block.attn.proj.\2"),
    (r"transformer_blocks\.(\d+)\.attn\.to_add_out\.(\w+)", r"joint_blocks.\1.context_block.attn.proj.\2"),
    (r"transformer_blocks\.(\d+)\.attn2\.to_out\.0\.(\w+)", r"joint_blocks.\1.x_block.attn2.proj.\2"),
    (r"transformer_blocks\.(\d+)\.norm1\.linear\.(\w+)", r"joint_blocks.\1.x_block.adaLN_modulation.1.\2"),
    (
        r"transformer_blocks\.(\d+)\.norm1_context\.linear\.(\w+)",
        r"joint_blocks.\1.context_block.adaLN_modulation.1.\2",
    ),
    (r"transformer_blocks\.(\d+)\.ff\.net\.0\.proj\.(\w+)", r"joint_blocks.\1.x_block.mlp.fc1.\2"),
    (r"transformer_blocks\.(\d+)\.ff\.net\.2\.(\w+)", r"joint_blocks.\1.x_block.mlp.fc2.\2"),
    (r"transformer_blocks\.(\d+)\.ff_context\.net\.0\.proj\.(\w+)", r"joint_blocks.\1.context_block.mlp.fc1.\2"),
    (r"transformer_blocks\.(\d+)\.ff_context\.net\.2\.(\w+)", r"joint_blocks.\1.context_block.mlp.fc2.\2"),
    (r"proj_out\.(\w+)", r"final_layer.linear.\1"),
]


def sd3_original_state_dict(transformer, prefix: str = "") -> dict:
    """SAI names: `joint_blocks.N.{x_block,context_block}`, fused qkv; the last block's context
    stream is pre-only (its adaLN, like the final layer's, in (shift, scale) order)."""
    state, out = dict(transformer.state_dict()), {}
    last = len(transformer.transformer_blocks) - 1
    for kind in ("weight", "bias"):
        for i in range(last + 1):
            block, joint = f"transformer_blocks.{i}.", f"joint_blocks.{i}."
            out[f"{joint}x_block.attn.qkv.{kind}"] = _fuse(state, block + "attn.", QKV, kind)
            out[f"{joint}context_block.attn.qkv.{kind}"] = _fuse(state, block + "attn.", ADDED_QKV, kind)
            if f"{block}attn2.to_q.{kind}" in state:
                out[f"{joint}x_block.attn2.qkv.{kind}"] = _fuse(state, block + "attn2.", QKV, kind)
        context = f"transformer_blocks.{last}.norm1_context.linear.{kind}"
        out[f"joint_blocks.{last}.context_block.adaLN_modulation.1.{kind}"] = _swap_halves(state.pop(context))
        out[f"final_layer.adaLN_modulation.1.{kind}"] = _swap_halves(state.pop(f"norm_out.linear.{kind}"))
    _rename(state, out, SD3_NAMES)
    assert not state, f"no original name for {sorted(state)}"
    return {prefix + key: value.contiguous() for key, value in out.items()}
