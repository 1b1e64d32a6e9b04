"""Images in and out: input images and masks, resizing latents, PNG parameters."""
