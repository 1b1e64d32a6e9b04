"""FLUX.2's transformer in ops the legacy ONNX exporter traces with dynamic sizes, as
sdrt.export.flux_tracing does for FLUX.1: the double-stream blocks' joint attention is FLUX.1's
(TracedFluxAttnProcessor: the same projections, norms and output layers), the single-stream
blocks' fused attention + MLP gets its own processor, RMS norms and the 4-axis RoPE table are
FLUX.1's traced ones (Flux2PosEmbed computes the same float64 angles per axis)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sdrt.export.flux_tracing import TracedFluxAttnProcessor, TracedRmsNorm, TracedRope, rotate

#: A fused projection's attention part: query, key and value.
QKV = 3


class TracedParallelSelfAttnProcessor:
    """Flux2ParallelSelfAttnProcessor: one projection to q, k, v and the SwiGLU MLP's input,
    attention with RoPE, then one output projection of [attention, MLP]; reshapes from traced
    sizes."""

    def __call__(self, attn, hidden_states, attention_mask=None, image_rotary_emb=None):
        projected = attn.to_qkv_mlp_proj(hidden_states)
        qkv, mlp = torch.split(projected, [QKV * attn.inner_dim, projected.shape[-1] - QKV * attn.inner_dim], dim=-1)

        def heads(tensor):
            return tensor.reshape(tensor.shape[0], tensor.shape[1], -1, attn.head_dim)

        query, key, value = (heads(part) for part in qkv.chunk(QKV, dim=-1))
        query, key = attn.norm_q(query), attn.norm_k(key)
        if image_rotary_emb is not None:
            cos, sin = image_rotary_emb
            query, key = rotate(query, cos, sin), rotate(key, cos, sin)
        attended = F.scaled_dot_product_attention(
            query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attn_mask=attention_mask
        ).transpose(1, 2)
        attended = attended.reshape(attended.shape[0], attended.shape[1], -1).to(query.dtype)
        return attn.to_out(torch.cat([attended, attn.mlp_act_fn(mlp)], dim=-1))


def traceable_flux2(model: torch.nn.Module) -> torch.nn.Module:
    """The Flux2Transformer2DModel with traced processors, RMS norms and RoPE (same values)."""
    for module in list(model.modules()):
        kind = type(module).__name__
        if kind == "Flux2Attention":
            module.set_processor(TracedFluxAttnProcessor())
        elif kind == "Flux2ParallelSelfAttention":
            module.set_processor(TracedParallelSelfAttnProcessor())
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.RMSNorm):
                setattr(module, name, TracedRmsNorm(child))
            elif type(child).__name__ == "Flux2PosEmbed":
                setattr(module, name, TracedRope(child))
    return model
