"""The model spaces a sampler can sample, and the model parameterisations each one has.

A diffusion model (SD 1.x/2.x, SDXL) is trained on x_t = alpha_t * x0 + sigma_t * noise and
predicts the noise (epsilon), v or x0 itself. A flow-matching model (SD3, FLUX) is trained on
the straight path x_sigma = (1 - sigma) * x0 + sigma * noise, sigma in [0, 1], and predicts the
velocity noise - x0. A sampler belongs to one space; a model family is of one space, and is
offered only the samplers of its own.
"""

from __future__ import annotations

DIFFUSION = "diffusion"
FLOW = "flow"
SPACES = (DIFFUSION, FLOW)
#: How messages name each space.
SPACE_LABELS = {DIFFUSION: "diffusion", FLOW: "flow-matching"}

#: The prediction that flow-matching models make (diffusers' name, as in UniPC's flow mode).
FLOW_PREDICTION = "flow_prediction"
#: Each space's `prediction_type` values (what predict_x0 converts to x0).
SPACE_PREDICTIONS: dict[str, tuple[str, ...]] = {
    DIFFUSION: ("epsilon", "v_prediction", "sample"),
    FLOW: (FLOW_PREDICTION,),
}
PREDICTION_TYPES = tuple(prediction for space in SPACES for prediction in SPACE_PREDICTIONS[space])


def check_space(space: str) -> str:
    """`space` if it is one of SPACES (a programming error otherwise, not a user's)."""
    if space not in SPACES:
        raise ValueError(f"unknown sampler space {space!r}; the spaces are {', '.join(SPACES)}")
    return space
