"""The libraries under an export, quiet: diffusers', transformers' and huggingface_hub's progress
bars, notices (transformers' "requires torchvision") and Python warnings from them and from
torch's ONNX exporter. `sdrt export` reports its own progress, one line per component; errors
still surface as sdrt's own one-line messages."""

from __future__ import annotations

import warnings

#: Modules whose Python warnings an export hides (regular expressions on the warning's module).
QUIET_MODULES = r"(diffusers|transformers|huggingface_hub|torch|accelerate|peft|onnx)(\.|$)"


def quiet_libraries() -> None:
    """For the rest of the process (a CLI command): nothing from the libraries but errors."""
    from diffusers.utils import logging as diffusers_logging
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as transformers_logging

    for logging in (diffusers_logging, transformers_logging):
        logging.set_verbosity_error()
        logging.disable_progress_bar()
    disable_progress_bars()
    warnings.filterwarnings("ignore", module=QUIET_MODULES)
