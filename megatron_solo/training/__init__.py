"""The training loop on megatron-core: model chunks, optimizer, schedules, checkpoints, logging."""
