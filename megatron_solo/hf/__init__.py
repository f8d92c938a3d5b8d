"""Hugging Face <-> megatron conversion: one adapter per architecture (``adapters``), streaming import
(``importer``), export to stock transformers or the SOLO release (``exporter``), the processor and
generation for exported models."""
