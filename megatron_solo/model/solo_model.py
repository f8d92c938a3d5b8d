"""SoloModel: megatron-core's GPTModel reading raw image patches.

On the first pipeline stage a tensor-parallel linear projects each 3072-value patch
to the model width, and the result is ADDED to the ``<vpatch>`` token embedding at
that patch's position (SOLO adds, it does not replace). Rotary positions come from
``position_ids``, which restart at 0 for every packed document.

Two layouts of a packed micro-batch reach the decoder: ``sbhd`` ([S, B, H], the local spec; our
core attention reads document boundaries from ``cu_seqlens``), and ``thd`` (one flat [B*S, 1, H]
sequence, the Transformer Engine path: see :mod:`megatron_solo.model.thd`). Either way the caller
passes [B, S] tensors and gets [B, S] losses or [B, S, V] logits back.
"""

from __future__ import annotations

import copy

import torch
from megatron.core import tensor_parallel
from megatron.core.models.gpt import GPTModel

from megatron_solo.config.model import SoloModelConfig
from megatron_solo.model import thd as T
from megatron_solo.model.batch_checks import check_batch
from megatron_solo.model.gpt import fit_llama3_frequencies


class SoloModel(GPTModel):
    """GPTModel + patch projection on stage 0 + per-document rotary positions."""

    def __init__(
        self, config, transformer_layer_spec, solo: SoloModelConfig, packed_format: str = "sbhd", **gpt_kwargs
    ) -> None:
        super().__init__(
            config=config,
            transformer_layer_spec=transformer_layer_spec,
            scatter_embedding_sequence_parallel=False,  # we scatter after adding patches
            **gpt_kwargs,
        )
        if packed_format not in ("sbhd", "thd"):
            raise ValueError(f"packed_format must be 'sbhd' or 'thd', got {packed_format!r}")
        self.solo = solo
        fit_llama3_frequencies(self, solo)
        # "thd" when Transformer Engine attention takes packed documents, "sbhd" for the local spec.
        self.packed_format = packed_format
        if self.pre_process:
            self.patch_projection = tensor_parallel.ColumnParallelLinear(
                solo.patch_dim,
                config.hidden_size,
                config=_without_sequence_parallel(config),
                init_method=config.init_method,
                bias=False,
                gather_output=True,
            )

    def embed(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        patches: torch.Tensor | None,
        thd: bool = False,
        patch_positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[S, B, H] input embeddings (``thd``: [B*S, 1, H]): token embedding plus projected patch at each ``<vpatch>``.

        ``patch_positions``: :meth:`patch_positions` of ``input_ids``, when the caller found them on the host.
        """
        hidden = self.embedding(input_ids=input_ids, position_ids=position_ids)
        if patches is None:
            # Still run the projection so its gradient exists (zero) and the
            # data-parallel reduction sees every parameter on every rank.
            patches = hidden.new_zeros(0, self.solo.patch_dim)
        projected, _ = self.patch_projection(patches.to(hidden.dtype))
        if patch_positions is None:
            patch_positions = self.patch_positions(input_ids)
        hidden = hidden.index_put((patch_positions[:, 1], patch_positions[:, 0]), projected, accumulate=True)
        if thd:
            hidden = T.to_thd(hidden)  # before the scatter: sequence parallelism splits the flat tokens
        if self.config.sequence_parallel:
            hidden = tensor_parallel.scatter_to_sequence_parallel_region(hidden)
        return hidden

    def patch_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[N, 2] (sample, position) of each ``<vpatch>``, batch-major: the order the patches come in."""
        return (input_ids == self.solo.vpatch_token_id).nonzero()  # row-major over [B, S]

    def check_inputs(self, input_ids, position_ids, patches, num_patches, cu_seqlens) -> None:
        """ValueError naming the sample and field of a batch this model cannot use (a host read of each).

        ``cu_seqlens``: the documents' boundaries over the flattened batch (None: one document per row).
        """
        check_batch(
            input_ids, position_ids, patches,
            vpatch_id=self.solo.vpatch_token_id, patch_dim=self.solo.patch_dim,
            vocab_size=self.vocab_size, max_positions=self.max_sequence_length,
            num_patches=num_patches,
        )
        if cu_seqlens is not None and self.packed_format == "thd":
            T.check_positions(position_ids, cu_seqlens)

    def _preprocess(self, input_ids, position_ids, decoder_input=None, inference_context=None,
                    packed_seq_params=None, padding_mask=None):
        out = super()._preprocess(
            input_ids=input_ids, position_ids=position_ids, decoder_input=decoder_input,
            inference_context=inference_context, packed_seq_params=packed_seq_params,
            padding_mask=padding_mask,
        )
        rotary = out[1]
        thd = packed_seq_params is not None and packed_seq_params.qkv_format == "thd"
        if rotary is not None and position_ids is not None and not thd:
            # megatron-core numbers positions 0..S-1 over the whole pack; SOLO restarts them per
            # document, so each token takes the row of its own position from megatron-core's table
            # ([S, 1, 1, D], plain, Llama-3-scaled or YaRN frequencies alike; positions are < S).
            out = (out[0], self._rows_of(rotary[:, 0, 0, :], position_ids), *out[2:])
        return out

    def _rows_of(self, table: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """The rotary rows at ``position_ids``: [S, B, 1, D], or [S, 1, 1, D] for TE's fused kernel.

        The fused kernel takes one row per position for the whole batch, so every sample must share them
        (one document per row); packed documents go through thd, where the kernel restarts per document.
        """
        if not self.config.apply_rope_fusion:
            return table[position_ids].transpose(0, 1)[:, :, None, :]
        if not bool((position_ids == position_ids[:1]).all()):
            raise ValueError("samples with different position_ids need packed_seq_params (document boundaries) "
                             "on the Transformer Engine path: its fused RoPE takes one position per token row")
        return table[position_ids[0]][:, None, None, :]

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        patches: torch.Tensor | None = None,
        packed_seq_params=None,
        num_patches: torch.Tensor | None = None,
        patch_positions: torch.Tensor | None = None,
        checked: bool = False,
        **kwargs,
    ) -> torch.Tensor:
        """Logits [B, S, V/tp] without labels, per-token loss [B, S] with them (last stage).

        ``packed_seq_params`` (document boundaries over the flattened batch) is taken in this
        model's layout whatever its ``qkv_format`` says. ``checked``: the caller ran :meth:`check_inputs`
        on the host copy of this batch (and may give its ``patch_positions``); otherwise they run here.
        """
        batch = input_ids.shape[0]
        thd = packed_seq_params is not None and self.packed_format == "thd"
        if packed_seq_params is not None:
            packed_seq_params = T.with_format(packed_seq_params, self.packed_format)
        decoder_input = None
        if self.pre_process:
            if not checked:
                self.check_inputs(input_ids, position_ids, patches, num_patches,
                                  None if packed_seq_params is None else packed_seq_params.cu_seqlens_q)
            decoder_input = self.embed(input_ids, position_ids, patches, thd=thd, patch_positions=patch_positions)
        elif thd and self.decoder.input_tensor is not None:
            self.decoder.input_tensor = T.from_pipeline_view(self.decoder.input_tensor)
        if thd:
            input_ids, position_ids = T.flatten_tokens(input_ids), T.flatten_tokens(position_ids)
            labels = None if labels is None else T.flatten_tokens(labels)
        out = super().forward(
            input_ids, position_ids, attention_mask, decoder_input=decoder_input, labels=labels,
            packed_seq_params=packed_seq_params, **kwargs,
        )
        if not thd:
            return out
        if not self.post_process:
            # megatron-core's p2p and backward expect the [S, B, H] shape of the pipeline buffers.
            return T.pipeline_view(out, batch)
        return T.unflatten_tokens(out, batch)


def _without_sequence_parallel(config):
    """``config`` with sequence parallelism off, for the patch projection.

    Every tensor-parallel rank holds all the micro-batch's patches ([N, patch_dim], N unrelated to the
    sequence), and the projection runs before the hidden states are split over the ranks: under
    sequence parallelism a ColumnParallelLinear would all-gather its input as if each rank held a slice.
    A shallow copy, not ``dataclasses.replace``, which would run the config's checks again.
    """
    plain = copy.copy(config)
    plain.sequence_parallel = False
    return plain
