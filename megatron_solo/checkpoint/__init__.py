"""HF <-> megatron conversion: hf_source (read HF dirs), hf_import (-> dist checkpoint at any TP/PP),
hf_export (-> Fuyu / SOLO release), hf_mapping (weight layouts), tokenizers, processor, generate."""
