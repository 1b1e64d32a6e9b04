"""FLUX's transformer in the ops the legacy ONNX exporter traces with dynamic sizes: the same
arithmetic as diffusers' modules, written so that no size of the example input is baked into
the graph (diffusers' `apply_rotary_emb` reshapes by `x.shape[:-1]`, its RoPE table uses
repeat_interleave, and opset 17 has no RMSNorm). `traceable` swaps them in the module tree of
the model being exported, through diffusers' own `set_attn_processor`."""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Each rotated pair of features: (real, imaginary).
PAIR = 2


class TracedRmsNorm(torch.nn.Module):
    """torch.nn.RMSNorm (the transformer's query/key norms) as the ops ONNX opset 17 has: the
    legacy exporter has no aten::rms_norm. Same weight, same float32 arithmetic."""

    def __init__(self, norm: torch.nn.RMSNorm):
        super().__init__()
        self.weight = norm.weight
        self.eps = norm.eps

    def forward(self, x):
        eps = self.eps if self.eps is not None else torch.finfo(x.dtype).eps
        normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        return normed if self.weight is None else normed * self.weight


class TracedRope(torch.nn.Module):
    """FluxPosEmbed's RoPE tables (float64 angles, as diffusers computes them on the CPU) with
    the interleave as stack + flatten: the exporter traces repeat_interleave to the example's
    sequence length, which would fix the graph to one image size."""

    def __init__(self, rope):
        super().__init__()
        self.theta = rope.theta
        self.axes_dim = list(rope.axes_dim)

    def forward(self, ids):
        cos_out, sin_out = [], []
        pos = ids.float().to(torch.float64)
        for axis, dim in enumerate(self.axes_dim):
            exponents = torch.arange(0, dim, 2, dtype=torch.float64) / dim
            angles = pos[:, axis : axis + 1] * (1.0 / (self.theta**exponents))[None, :]
            cos_out.append(torch.stack([angles.cos(), angles.cos()], dim=-1).flatten(-2).float())
            sin_out.append(torch.stack([angles.sin(), angles.sin()], dim=-1).flatten(-2).float())
        return torch.cat(cos_out, dim=-1), torch.cat(sin_out, dim=-1)


def traceable(model: torch.nn.Module) -> torch.nn.Module:
    """The transformer with each torch.nn.RMSNorm replaced by a TracedRmsNorm sharing its
    weight, its RoPE by TracedRope and its attention processors by TracedFluxAttnProcessor
    (same values, a graph of any sequence length)."""
    model.set_attn_processor(TracedFluxAttnProcessor())
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.RMSNorm):
                setattr(module, name, TracedRmsNorm(child))
            elif type(child).__name__ == "FluxPosEmbed":
                setattr(module, name, TracedRope(child))
    return model


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """diffusers' apply_rotary_emb(x, (cos, sin), sequence_dim=1) on [batch, sequence, heads, dim]:
    pairs (a, b) -> (a cos - b sin, b cos + a sin), in float32."""
    batch, length, heads, dim = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
    pairs = x.reshape(batch, length, heads, dim // PAIR, PAIR)
    real, imaginary = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack([-imaginary, real], dim=-1).reshape(batch, length, heads, dim)
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


class TracedFluxAttnProcessor:
    """FluxAttnProcessor (joint attention over text and image tokens, RoPE on queries and keys,
    the PyTorch SDPA backend) with every reshape from traced sizes."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        def heads(tensor):
            return tensor.reshape(tensor.shape[0], tensor.shape[1], -1, attn.head_dim)

        query, key, value = (heads(projection(hidden_states)) for projection in (attn.to_q, attn.to_k, attn.to_v))
        query, key = attn.norm_q(query), attn.norm_k(key)
        joint = encoder_hidden_states is not None and attn.added_kv_proj_dim is not None
        if joint:
            text_query = attn.norm_added_q(heads(attn.add_q_proj(encoder_hidden_states)))
            text_key = attn.norm_added_k(heads(attn.add_k_proj(encoder_hidden_states)))
            text_value = heads(attn.add_v_proj(encoder_hidden_states))
            query = torch.cat([text_query, query], dim=1)
            key = torch.cat([text_key, key], dim=1)
            value = torch.cat([text_value, value], dim=1)
        if image_rotary_emb is not None:
            cos, sin = image_rotary_emb
            query, key = rotate(query, cos, sin), rotate(key, cos, sin)
        attended = F.scaled_dot_product_attention(
            query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attn_mask=attention_mask
        ).transpose(1, 2)
        attended = attended.reshape(attended.shape[0], attended.shape[1], -1).to(query.dtype)
        if not joint:
            return attended
        text_length = encoder_hidden_states.shape[1]
        text, image = attended[:, :text_length], attended[:, text_length:]
        image = attn.to_out[1](attn.to_out[0](image.contiguous()))
        return image, attn.to_add_out(text.contiguous())
