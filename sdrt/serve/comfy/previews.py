"""ComfyUI's preview images on the websocket: binary frames (server.py send_image / encode_bytes)
of a 4-byte big-endian event type (1, PREVIEW_IMAGE), a 4-byte image type (1, JPEG) and the JPEG,
sent to the prompt's client after denoising steps, from sdrt's previews
(sdrt.runtime.features.preview: the tiny VAE when exported, else the full one).

Opt-in as ComfyUI's: its server previews only when launched with --preview-method (sdrt's
--preview-every N: every N steps), and a prompt's `extra_data.preview_method` overrides that
(ComfyUI's execution.py: "none" turns them off, "auto" / "latent2rgb" / "taesd" on, every step
unless --preview-every says otherwise; "default" or none given: the server's)."""

from __future__ import annotations

import io
import struct
from collections.abc import Callable

from PIL import Image

from sdrt.runtime.features.preview import Preview

#: ComfyUI's BinaryEventTypes.PREVIEW_IMAGE and send_image's type number for JPEG.
PREVIEW_IMAGE_EVENT, JPEG_TYPE = 1, 1
#: The struct format of the two header words: big-endian unsigned 32-bit.
HEADER = ">II"
#: extra_data.preview_method values that turn previews on and off (LatentPreviewMethod's names).
PREVIEWS_ON, PREVIEWS_OFF = ("auto", "latent2rgb", "taesd"), ("none",)
#: ComfyUI's --preview-size default (a preview's longest side at most) and its JPEG quality.
PREVIEW_SIZE, JPEG_QUALITY = 512, 95


def preview_frame(image: Image.Image) -> bytes:
    """One binary websocket frame for a preview image."""
    shown = image.convert("RGB")
    shown.thumbnail((PREVIEW_SIZE, PREVIEW_SIZE))
    frame = io.BytesIO()
    frame.write(struct.pack(HEADER, PREVIEW_IMAGE_EVENT, JPEG_TYPE))
    shown.save(frame, format="JPEG", quality=JPEG_QUALITY)
    return frame.getvalue()


def preview_for(extra: dict, server_every: int, send: Callable[[bytes], None]) -> Preview | None:
    """The previews of a prompt with `extra_data` `extra` on a server previewing every
    `server_every` steps (0: none); each frame goes to `send`."""
    method = extra.get("preview_method")
    if method in PREVIEWS_OFF:
        return None
    if method in PREVIEWS_ON:
        every = server_every or 1
    elif server_every:
        every = server_every
    else:
        return None
    return Preview(every, lambda step, total, images: send(preview_frame(images[0])))
