"""Data pipeline: image rule and patches, tokenizer, sample kinds, shards, packing, packed dataset."""
