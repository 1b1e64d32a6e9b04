"""A1111's noise fields of a txt2img/img2img body (subseed, subseed_strength, seed_resize_from_h/w)
and options (eta_noise_seed_delta, randn_source) as sdrt's A1111Noise, and what A1111's `info`
reports of them. The variation seeds themselves are numbered per image by the route (processing.py:
with a variation strength every image has the seed, and the variation seeds count up)."""

from __future__ import annotations

from sdrt.runtime.a1111_noise import A1111Noise

#: What A1111 sends for "no seed resize" (its sliders' 0, the API's -1).
NO_RESIZE = (None, 0, -1)


def a1111_noise(body, options) -> A1111Noise | None:
    """The request's noise settings (its variation seeds are set per image set by the route);
    None where they leave sdrt's default noise as it is (torch's CPU generator per seed)."""
    height, width = body.seed_resize_from_h, body.seed_resize_from_w
    resize = None
    if height not in NO_RESIZE and width not in NO_RESIZE and height > 0 and width > 0:
        resize = (int(width), int(height))
    noise = A1111Noise(
        subseed_strength=body.subseed_strength or 0,
        seed_resize_from=resize,
        eta_noise_seed_delta=options.eta_noise_seed_delta,
        randn_source=options.randn_source,
    )
    return None if noise == A1111Noise() else noise


def a1111_variation_info(noise: A1111Noise | None, subseed: int | None, images: int) -> dict:
    """A1111's `info` fields of the variation seeds: subseed, all_subseeds, subseed_strength."""
    if noise is None or subseed is None:
        return {"subseed": -1, "all_subseeds": [], "subseed_strength": 0}
    return {
        "subseed": subseed,
        "all_subseeds": [subseed + index for index in range(images)],
        "subseed_strength": noise.subseed_strength,
    }
