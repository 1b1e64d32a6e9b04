"""A tiny Qwen-like tokenizer, trained here: byte-level BPE (the `tokenizers` library's trainer)
on the repository's prompt corpus, with Qwen's special tokens (`<|endoftext|>` as pad,
`<|im_start|>`, `<|im_end|>`) and a Qwen3-like chat template (user/assistant turns, the
generation prompt, the `enable_thinking` switch), saved as transformers saves a fast tokenizer
(tokenizer.json + tokenizer_config.json). Export and test time only (needs transformers).
"""

from __future__ import annotations

from pathlib import Path

from sdrt.export.random_flux import CORPUS, CORPUS_REPEATS, FALLBACK_CORPUS

TINY_QWEN_VOCAB = 400
PAD, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
#: Qwen3's chat template, shortened to what one conversation without tools renders (the same
#: text as the real one for system, user and assistant messages and the generation prompt).
QWEN_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)


def save_qwen_tokenizer(folder: str | Path) -> Path:
    """Train the tiny tokenizer and save it into `folder` (created); returns the folder."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    text = CORPUS.read_text(encoding="utf-8") if CORPUS.is_file() else FALLBACK_CORPUS
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_QWEN_VOCAB,
        special_tokens=[PAD, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(text.splitlines() * CORPUS_REPEATS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD,
        eos_token=IM_END,
        additional_special_tokens=[IM_START, IM_END],
        chat_template=QWEN_CHAT_TEMPLATE,
    )
    fast.save_pretrained(str(folder))
    return folder


#: A tiny Qwen3 language model's shape (Qwen3's structure: grouped-query attention with q/k RMS
#: norms, SwiGLU MLPs; 4 layers so hidden_states[-2] and intermediate layers differ).
TINY_QWEN3 = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "max_position_embeddings": 1024,
    "rope_theta": 1_000_000.0,
}


def build_random_qwen3(vocab_size: int, seed: int = 0, **overrides):
    """A random Qwen3Model (transformers) with RMS norm scales around 1, as trained ones are."""
    import torch
    from transformers import Qwen3Config, Qwen3Model

    from sdrt.export.random_flux import _realistic_rms_norms

    torch.manual_seed(seed)
    model = Qwen3Model(Qwen3Config(vocab_size=vocab_size, **{**TINY_QWEN3, **overrides})).eval()
    _realistic_rms_norms(model, seed + 1)
    return model
