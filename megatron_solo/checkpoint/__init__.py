"""Weight mapping between Hugging Face (Mistral/Llama/Fuyu/SOLO-7B) and megatron-core."""
