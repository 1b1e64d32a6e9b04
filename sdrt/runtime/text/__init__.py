"""Text: the CLIP tokenizer and its files, the text encoders, textual-inversion embeddings and
A1111's prompt language."""
