"""A1111's prompt language (the webui's `modules/prompt_parser.py` and `modules/sd_hijack_clip.py`
are its specification; docs/prompts.md describes it with sdrt's few documented differences).

- sdrt.runtime.text.prompts.schedule: prompt editing `[from:to:when]` and alternation `[a|b]`, as the
  text each denoising step is conditioned on;
- sdrt.runtime.text.prompts.emphasis: `(text)`, `[text]`, `(text:1.3)` and BREAK as weighted fragments,
  and the emphasis modes that apply the weights to the encoder's hidden states;
- sdrt.runtime.text.prompts.chunks: fragments as 75-token chunks (comma back-off, BREAK) of token ids
  and per-token weights, each chunk encoded on its own.
"""
