"""LoRA: files, tags, merging into engines and the merged-weight cache."""
