"""Tests of megatron_solo.config."""
