"""The UNet graphs DeepCache needs (`sdrt export --deepcache`), branch 0 of the `deepcache`
package's DeepCacheSDHelper:

- `unet` gains one output, `deep_feature`: the hidden state the last up block hands its last
  layer (the output of its second-to-last attention, or resnet where it has none). Plain
  generation asks the engine for `out_sample` only, so it runs as before.
- `unet_shallow` (a new, small graph) is what a cached step computes: the time embedding,
  `conv_in`, the last up block's last resnet (and attention) on [deep_feature, conv_in's
  output], and the output convolution (SDXL: plus its added text/size embedding). Its weights
  are the UNet's own, exported again (a few MB: one resnet and one transformer block at the
  highest resolution).

SD 1.x/2.x and SDXL UNets, text-to-image and image-to-image; the runtime refuses the rest by name."""

from __future__ import annotations

from dataclasses import replace

import torch

from sdrt.errors import ConfigError
from sdrt.runtime.manifest import (
    DEEP_FEATURE,
    LATENT_HEIGHT,
    LATENT_WIDTH,
    TEXT_EMBEDS,
    TIME_IDS,
    TIMESTEP_COND,
    UNET_BATCH,
    UNET_CONTEXT,
    UNET_SHALLOW,
    TensorSpec,
)

SUPPORTED_ADDITIONS = (None, "text_time")  # SD 1.x/2.x; SDXL's pooled text + size conditioning


def _handoff_layer(unet) -> torch.nn.Module:
    """The layer whose output the last up block's last layer concatenates with conv_in's."""
    block = unet.up_blocks[-1]
    attentions = getattr(block, "attentions", None)
    if len(block.resnets) < 2:
        raise ConfigError("DeepCache needs a last up block of at least two layers")
    return attentions[-2] if attentions else block.resnets[-2]


class DeepFeatureUnet(torch.nn.Module):
    """The plain UNet export's module, also returning the deep feature."""

    def __init__(self, plain: torch.nn.Module, unet):
        super().__init__()
        self.plain = plain
        self.handoff = (_handoff_layer(unet),)  # a tuple: not registered twice as a submodule

    def forward(self, *inputs):
        """The plain output and the handoff layer's, caught by a hook that lives for this call only
        (the pipeline's UNet is left as it was)."""
        caught = []

        def catch(module, args, output):
            caught.append(output[0] if isinstance(output, (tuple, list)) else getattr(output, "sample", output))

        hook = self.handoff[0].register_forward_hook(catch)
        try:
            out = self.plain(*inputs)
        finally:
            hook.remove()
        return out, caught[-1]


class ShallowUnet(torch.nn.Module):
    """A cached step of branch 0: see the module's note. `names` are its inputs before the deep
    feature: sample, timestep, the text context where the last up block attends to it, LCM's
    timestep_cond, SDXL's text_embeds and time_ids."""

    def __init__(self, unet, names: list[str]):
        super().__init__()
        self.unet, self.names = unet, names

    def forward(self, *inputs):
        unet = self.unet
        given, deep_feature = dict(zip(self.names, inputs[:-1])), inputs[-1]
        sample, context = given["sample"], given.get(UNET_CONTEXT)
        emb = unet.time_embedding(
            unet.get_time_embed(sample=sample, timestep=given["timestep"]), given.get(TIMESTEP_COND)
        )
        added = {name: given[name] for name in (TEXT_EMBEDS, TIME_IDS) if name in given}
        if added:  # SDXL: the pooled text and size conditioning, as the UNet adds them
            emb = emb + unet.get_aug_embed(emb=emb, encoder_hidden_states=context, added_cond_kwargs=added)
        if unet.time_embed_act is not None:
            emb = unet.time_embed_act(emb)
        hidden = torch.cat([deep_feature, unet.conv_in(sample)], dim=1)
        block = unet.up_blocks[-1]
        hidden = block.resnets[-1](hidden, emb)
        if getattr(block, "attentions", None):
            hidden = block.attentions[-1](hidden, encoder_hidden_states=context, return_dict=False)[0]
        if unet.conv_norm_out is not None:
            hidden = unet.conv_act(unet.conv_norm_out(hidden))
        return unet.conv_out(hidden)


def deepcache_exports(exports: list, pipeline) -> list:
    """`exports` with the UNet giving its deep feature, and the shallow UNet after it."""
    unet = pipeline.unet
    if getattr(unet.config, "addition_embed_type", None) not in SUPPORTED_ADDITIONS or getattr(
        unet.config, "class_embed_type", None
    ):
        raise ConfigError("--deepcache is for SD 1.x/2.x and SDXL UNets (this one takes other added embeddings)")
    _handoff_layer(unet)
    index = next(i for i, e in enumerate(exports) if e.name == "unet")
    plain = exports[index]
    width = unet.up_blocks[-1].resnets[-2].out_channels
    feature = TensorSpec(DEEP_FEATURE, "float32", [UNET_BATCH, width, LATENT_HEIGHT, LATENT_WIDTH])
    full = replace(plain, module=DeepFeatureUnet(plain.module, unet), outputs=[*plain.outputs, feature])
    made_count = len([spec for spec in plain.inputs if spec.name not in plain.defaults])  # no ControlNet residuals
    attends = bool(getattr(unet.up_blocks[-1], "attentions", None))
    kept = [spec for spec in plain.inputs[:made_count] if attends or spec.name != UNET_CONTEXT]
    positions = [index for index, spec in enumerate(plain.inputs[:made_count]) if spec in kept]

    def shallow_inputs(gen, batch, latent_h, latent_w):
        made = plain.make_inputs(gen, batch, latent_h, latent_w)
        return (
            *(made[index] for index in positions),
            torch.randn(made[0].shape[0], width, latent_h, latent_w, generator=gen),
        )

    shallow = replace(
        plain,
        name=UNET_SHALLOW,
        module=ShallowUnet(unet, [spec.name for spec in kept]),
        inputs=[*kept, feature],
        make_inputs=shallow_inputs,
        defaults={},
        lora_model=None,
    )
    return [*exports[:index], full, shallow, *exports[index + 1 :]]
