"""SOLO on megatron-core: GPTModel plus a patch projection, packed-document attention."""
