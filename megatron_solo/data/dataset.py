"""The packed training dataset: shards + weights + L + seed -> model-ready packs, sharded over DP ranks.

Per epoch e (deterministic from seed, e and the blend):
1. blend: `samples_per_epoch` draws over the datasets by weight (megatron-core's blending helper); with
   "tokens" weighting a dataset's sample weight is its token weight over its mean sample length, so the
   token shares follow the weights. The k-th draw of dataset d takes sample perm_{d,e,pass}[k mod n_d].
2. pack the drawn stream with the C++ packer (shuffled by (seed, e); over-long samples split outside
   images or dropped, and counted).
Packs of successive epochs form one global sequence; global pack g is the unit of DP sharding and of the
resumable state (`PackedDataLoader.state_dict()` = packs consumed so far, over all ranks).

One pack (S = seq_length) as returned by `PackedDataset[g]`:
    tokens int64 [S], labels int64 [S] (tokens shifted left; the last label is padding with loss 0),
    loss_mask float32 [S]: 1 where labels[i] is a trained target of the same document (0 on image
      patches and vision special targets, before each document boundary, on padding, and on SFT prompts),
    position_ids int64 [S] restarting at 0 per document (padding counts up as its own document),
    patches float32 [N, 3072] normalized, in the order of the <vpatch> positions,
    cu_seqlens int32 [docs+1]: document boundaries; trailing padding is its own last document,
    num_patches int.
`collate_packs` batches B packs ([B, S] tensors; patches concatenated batch-major; cu_seqlens offset by
b*S and concatenated into one boundary list over the flattened B*S tokens). There are no "-1 = no patch"
entries to offset: patch slots are exactly the positions where tokens == <vpatch>.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import sys
from dataclasses import dataclass

import numpy as np
import torch

from megatron_solo.config.data import DataConfig
from megatron_solo.data.image import PATCH_SIZE
from megatron_solo.data.overflow import DataLossError, overflow_report, refusal, source_labels
from megatron_solo.data.packing import PackResult, blend_indices, normalize_weights, pack, shuffled_order
from megatron_solo.data.shard_set import ShardSet, check_patch_size, decode_image
from megatron_solo.data.shards import ShardError
from megatron_solo.vocab import PAD_ID


@dataclass
class EpochPlan:
    """The packs of one epoch and where their items come from."""

    packs: PackResult
    dataset: np.ndarray  # per stream position: dataset number
    sample: np.ndarray  # per stream position: sample index within that dataset


def _gather_blocks(ptr, start, end, idx):
    counts = ptr[idx + 1] - ptr[idx]
    new_ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    total = int(new_ptr[-1])
    if total == 0:
        return new_ptr, np.zeros(0, np.int64), np.zeros(0, np.int64)
    # index of every block: its sample's first block + its rank within that sample
    src = np.repeat(ptr[idx], counts) + (np.arange(total) - np.repeat(new_ptr[:-1], counts))
    return new_ptr, start[src], end[src]


class PackedDataset(torch.utils.data.Dataset):
    """Map-style dataset over global pack indices (all epochs back to back); see the module docstring."""

    def __init__(self, config: DataConfig, seq_length: int, patch_size: int = PATCH_SIZE, pad_id: int = PAD_ID):
        """Index the shards of every dataset of the blend (tars are opened lazily, per worker).

        ``seq_length``: tokens per pack (the training run's); ``patch_size``: the model's patch side.
        """
        if not config.datasets:
            raise ValueError("DataConfig.datasets is empty")
        if seq_length <= 0:
            raise ValueError(f"seq_length must be positive, got {seq_length}")
        self.config, self.seq_length, self.patch_size = config, seq_length, patch_size
        self.pad_id = pad_id
        self.sets = [ShardSet(d.path) for d in config.datasets]
        for d in config.datasets:
            check_patch_size(d.path, patch_size)
        visions = {s.vision for s in self.sets}
        if len(visions) > 1:
            raise ShardError(f"datasets of the blend use different image-block ids: {sorted(visions)}")
        self.vision = visions.pop()
        weights = normalize_weights([d.weight for d in config.datasets])
        if config.weighting == "tokens":
            weights = normalize_weights(weights / np.array([s.lengths.mean() for s in self.sets]))
        self.sample_weights = weights
        self.samples_per_epoch = config.samples_per_epoch or sum(len(s) for s in self.sets)
        # all datasets concatenated, so a blended stream gathers lengths and image blocks in one step
        self._set_offset = np.concatenate([[0], np.cumsum([len(s) for s in self.sets])]).astype(np.int64)
        self._lengths = np.concatenate([s.lengths for s in self.sets])
        block_offset = np.concatenate([[0], np.cumsum([len(s.block_start) for s in self.sets])])
        self._block_ptr = np.concatenate([[0]] + [s.block_ptr[1:] + o for s, o in zip(self.sets, block_offset)])
        self._block_start = np.concatenate([s.block_start for s in self.sets])
        self._block_end = np.concatenate([s.block_end for s in self.sets])
        self._plans: dict[int, EpochPlan] = {}
        self._epoch_sizes: list[int] = []

    # ---------------------------------------------------------------------------- planning
    def plan(self, epoch: int) -> EpochPlan:
        """Blend and pack epoch `epoch` (cached: the last two epochs)."""
        if epoch in self._plans:
            return self._plans[epoch]
        cfg = self.config
        ds, count = blend_indices(self.sample_weights, self.samples_per_epoch)
        sample = np.empty_like(count)
        for d, shard_set in enumerate(self.sets):
            sel = np.flatnonzero(ds == d)
            n = len(shard_set)
            k = count[sel]
            out = np.empty(len(sel), np.int64)
            for p in range(int(k.max()) // n + 1 if len(sel) else 0):  # one permutation per pass over d
                in_pass = (k // n) == p
                perm = shuffled_order(n, cfg.seed * 1_000_003 + d, epoch * 1_000_000 + p)
                out[in_pass] = perm[k[in_pass] % n]
            sample[sel] = out
        stream = self._set_offset[ds] + sample  # ids in the concatenation of all datasets
        block_ptr, block_start, block_end = _gather_blocks(self._block_ptr, self._block_start, self._block_end,
                                                           stream)
        lengths = self._lengths[stream]
        packs = pack(lengths, self.seq_length, cfg.seed, epoch, block_ptr, block_start, block_end,
                     overflow=cfg.overflow, open_bins=cfg.open_bins, shuffle=True)
        result = EpochPlan(packs, ds.astype(np.int64), sample)
        self._plans[epoch] = result
        for old in [e for e in self._plans if e < epoch - 1]:
            del self._plans[old]
        return result

    def epoch_size(self, epoch: int) -> int:
        """Number of packs of epoch `epoch`."""
        while len(self._epoch_sizes) <= epoch:
            epoch = len(self._epoch_sizes)
            size = self.plan(epoch).packs.num_packs
            if size == 0:
                why = refusal(self.overflow_report(epoch), 0.0, epoch)
                raise DataLossError(f"epoch {epoch} has no packs, every sample was dropped: {why}")
            self._epoch_sizes.append(size)
        return self._epoch_sizes[epoch]

    def locate(self, g: int) -> tuple[int, int]:
        """(epoch, pack within the epoch) of global pack g."""
        epoch = 0
        while g >= self.epoch_size(epoch):
            g -= self.epoch_size(epoch)
            epoch += 1
        return epoch, g

    def __len__(self) -> int:
        """Packs in the first epoch (the dataset itself is unbounded: later epochs follow)."""
        return self.epoch_size(0)

    def stats(self, epoch: int = 0) -> dict:
        """Packing statistics of one epoch: packs, fill, split and dropped samples."""
        p = self.plan(epoch).packs
        return {"packs": p.num_packs, "fill": p.fill(), "split_samples": p.num_split,
                "dropped_samples": len(p.dropped), "dropped_tokens": p.dropped_tokens,
                "tokens": int(p.pack_lengths().sum())}

    def overflow_report(self, epoch: int = 0) -> dict[str, dict]:
        """Per dataset (its name, or its path): samples and tokens drawn, dropped and split in `epoch`.

        Each entry: samples_drawn, samples_dropped, samples_split, tokens_drawn, tokens_dropped, drop_share
        (dropped over drawn tokens), longest_dropped_sample, largest_dropped_image_block, reason ("" when
        nothing was dropped).
        """
        plan = self.plan(epoch)
        stream = self._set_offset[plan.dataset] + plan.sample
        return overflow_report(plan.packs, plan.dataset, stream, self._lengths,
                               (self._block_ptr, self._block_start, self._block_end),
                               source_labels(self.config.datasets), self.patch_size, self.config.overflow)

    def check_overflow(self, max_drop_share: float, epoch: int = 0) -> None:
        """Raise DataLossError naming every dataset that loses more than `max_drop_share` of its tokens."""
        error = refusal(self.overflow_report(epoch), max_drop_share, epoch)
        if error is not None:
            raise error

    def fingerprint(self) -> str:
        """Hash of everything that determines the packs (config and shard identities)."""
        cfg = self.config
        ident = {"datasets": [[d.weight, s.fingerprint()] for d, s in zip(cfg.datasets, self.sets)],
                 "seq_length": self.seq_length, "seed": cfg.seed, "overflow": cfg.overflow,
                 "open_bins": cfg.open_bins, "weighting": cfg.weighting, "samples_per_epoch": cfg.samples_per_epoch}
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]

    # ---------------------------------------------------------------------------- reading
    def __getitem__(self, g: int) -> dict:
        """Global pack g as model-ready tensors."""
        epoch, p = self.locate(int(g))
        plan = self.plan(epoch)
        S = self.seq_length
        P = self.patch_size
        tokens = np.full(S, self.pad_id, np.int64)
        target = np.zeros(S, bool)
        position_ids = np.zeros(S, np.int64)
        cu = [0]
        images = []
        pos = 0
        for stream_pos, start, end in plan.packs.pack(p):
            sample = self.sets[int(plan.dataset[stream_pos])].read(int(plan.sample[stream_pos]))
            n = end - start
            tokens[pos:pos + n] = sample.ids[start:end]
            target[pos:pos + n] = sample.target[start:end]
            position_ids[pos:pos + n] = np.arange(n)
            # the packer never cuts inside an image: a block is either wholly in this piece or not at all
            images += [image for image in sample.images if start <= image.start and image.end <= end]
            pos += n
            cu.append(pos)
        if pos < S:
            position_ids[pos:] = np.arange(S - pos)
            cu.append(S)
        # decode straight into one preallocated tensor: a 32K pack holds ~350 MB of float32 patches, and a
        # torch.cat of per-image tensors would copy all of it once more
        total = sum(image.rows * image.cols for image in images)
        patch_tensor = empty_patches(total, 3 * P * P)
        at = 0
        for image in images:
            n = image.rows * image.cols
            decode_image(image, P, patch_tensor[at:at + n])
            at += n
        labels = np.empty(S, np.int64)
        labels[:-1] = tokens[1:]
        labels[-1] = self.pad_id
        loss_mask = np.zeros(S, np.float32)
        loss_mask[:-1] = target[1:]
        for boundary in cu[1:-1]:
            loss_mask[boundary - 1] = 0.0  # the next document's first token is not predictable
        return {
            "tokens": torch.from_numpy(tokens),
            "labels": torch.from_numpy(labels),
            "loss_mask": torch.from_numpy(loss_mask),
            "position_ids": torch.from_numpy(position_ids),
            "patches": patch_tensor,
            "cu_seqlens": torch.tensor(cu, dtype=torch.int32),
            "num_patches": int(patch_tensor.shape[0]),
        }


_MADV_HUGEPAGE = 14
_libc = None


def _advise_huge_pages(t: torch.Tensor) -> None:
    """Ask Linux for transparent huge pages under a big fresh buffer: ~5x cheaper first touch (2 MiB faults)."""
    global _libc
    nbytes = t.numel() * t.element_size()
    if nbytes < (8 << 20) or not sys.platform.startswith("linux"):
        return
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
            _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        huge = 1 << 21
        start = (t.data_ptr() + huge - 1) & ~(huge - 1)
        end = (t.data_ptr() + nbytes) & ~(huge - 1)
        if end > start:
            _libc.madvise(start, end - start, _MADV_HUGEPAGE)  # advisory: failure just means 4 KiB pages
    except (OSError, AttributeError):
        pass


def empty_patches(n: int, width: int) -> torch.Tensor:
    """Uninitialized float32 [n, width] for a pack's patches.

    In a DataLoader worker it is allocated in shared memory right away, so sending it to the main process
    costs no copy (otherwise torch copies every storage into shared memory on the way out); in the main
    process it is backed by huge pages when the kernel allows.
    """
    if torch.utils.data.get_worker_info() is not None and n:
        storage = torch.UntypedStorage._new_shared(n * width * 4)
        return torch.empty(0).set_(storage, 0, (n, width))
    t = torch.empty(n, width)
    _advise_huge_pages(t)
    return t


def collate_packs(batch: list[dict]) -> dict:
    """B packs -> [B, S] tensors, patches concatenated batch-major, cu_seqlens over the flattened B*S tokens."""
    S = batch[0]["tokens"].shape[0]
    out = {k: torch.stack([b[k] for b in batch]) for k in ("tokens", "labels", "loss_mask", "position_ids")}
    # B=1 (SOLO's micro batch) passes the pack's patches through without another ~350 MB copy
    if len(batch) == 1:
        out["patches"] = batch[0]["patches"]
    else:
        out["patches"] = empty_patches(sum(b["patches"].shape[0] for b in batch), batch[0]["patches"].shape[1])
        torch.cat([b["patches"] for b in batch], out=out["patches"])
    cu = [batch[0]["cu_seqlens"]] + [b["cu_seqlens"][1:] + i * S for i, b in enumerate(batch) if i]
    out["cu_seqlens"] = torch.cat(cu).to(torch.int32)
    # per pack, so the model can name the sample whose <vpatch> count disagrees
    out["num_patches"] = torch.tensor([int(b["num_patches"]) for b in batch], dtype=torch.int64)
    return out


def patch_positions(tokens: torch.Tensor, vpatch_id: int = 32001) -> torch.Tensor:
    """Flat indices of the <vpatch> slots of a [S] or [B, S] token tensor, in the order of `patches`."""
    return torch.nonzero(tokens.reshape(-1) == vpatch_id).squeeze(1)
