"""Count the places a forward pass reads device values on the host (what blocks a GPU's queue), on the CPU.

A batch "on the device" is made of :class:`DeviceTensor`; every tensor computed from it is one too (torch's
subclass propagation), so a host read of anything derived from the batch (``.item()``, ``.tolist()``, ``if
tensor``, ``int(tensor)``, ``nonzero``, boolean-mask indexing) is recorded, with the Python frame that made it.
Reads inside modules that :func:`counting` is told to skip (stand-ins for GPU kernels) are not counted.
"""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Iterator

import torch

SYNCING = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__int__,
           torch.Tensor.__float__, torch.Tensor.__index__, torch.Tensor.nonzero, torch.nonzero,
           torch.Tensor.masked_select, torch.masked_select, torch.Tensor.unique, torch.unique}
_state = {"on": False, "skip": 0, "reads": []}


def _bool_mask_index(func, args) -> bool:
    if func is not torch.Tensor.__getitem__ or len(args) < 2:
        return False
    index = args[1] if isinstance(args[1], tuple) else (args[1],)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in index)


def _plumbing(filename: str) -> bool:
    """Frames of torch, of the CPU emulation and of this module: the read is charged to the caller."""
    return any(part in filename for part in ("/torch/", "cpu_emulation", "host_syncs"))


class DeviceTensor(torch.Tensor):
    """A CPU tensor standing for a GPU one: host reads of its values are recorded while counting."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if _state["on"] and not _state["skip"] and (func in SYNCING or _bool_mask_index(func, args)):
            frame = next(f for f in reversed(traceback.extract_stack()[:-1]) if not _plumbing(f.filename))
            _state["reads"].append(f"{getattr(func, '__name__', func)} at {frame.filename}:{frame.lineno}")
        return super().__torch_function__(func, types, args, kwargs or {})


def on_device(value):
    """``value`` (a tensor, or a dict of them) as DeviceTensors."""
    if isinstance(value, dict):
        return {k: on_device(v) for k, v in value.items()}
    return value.as_subclass(DeviceTensor) if torch.is_tensor(value) else value


@contextlib.contextmanager
def counting(skip: list[torch.nn.Module] = ()) -> Iterator[list[str]]:
    """The host reads of device values made inside the block, outside the modules in ``skip``."""
    hooks = []
    for module in skip:
        hooks.append(module.register_forward_pre_hook(lambda *_: _state.__setitem__("skip", _state["skip"] + 1)))
        hooks.append(module.register_forward_hook(lambda *_: _state.__setitem__("skip", _state["skip"] - 1)))
    _state.update(on=True, skip=0, reads=[])
    try:
        yield _state["reads"]
    finally:
        _state["on"] = False
        for hook in hooks:
            hook.remove()
