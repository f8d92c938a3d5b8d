"""CPU emulation of the CUDA calls megatron-core makes, for machines without a GPU.

megatron-core has no CPU path: its schedules, RNG tracker, DDP buffers and optimizers
call ``torch.cuda`` directly. On a machine without CUDA we make those calls behave as
they would on one device whose memory is host memory:

* tensors asked for on ``cuda`` (by name, index or ``torch.cuda.current_device()``)
  are made on the CPU, through a ``TorchFunctionMode``;
* ``Tensor.type()`` reports ``torch.cuda.*Tensor`` names, because the optimizers
  dispatch on those strings;
* the "CUDA" random generator is the CPU default generator, which is the one CPU
  dropout draws from, so the model-parallel RNG tracker's forked states are real,
  distinct generator states;
* streams, events and synchronisation are no-ops or host-side equivalents;
* the backward pass runs under the same redirection (see :func:`_backward_under_mode`).

This module is the only place that patches ``torch.cuda``; nothing is patched when
CUDA is present (:func:`enable` refuses).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

_CUDA_TYPE_NAMES = {
    torch.float32: "torch.cuda.FloatTensor",
    torch.float16: "torch.cuda.HalfTensor",
    torch.bfloat16: "torch.cuda.BFloat16Tensor",
    torch.float64: "torch.cuda.DoubleTensor",
    torch.int64: "torch.cuda.LongTensor",
    torch.int32: "torch.cuda.IntTensor",
    torch.uint8: "torch.cuda.ByteTensor",
    torch.bool: "torch.cuda.BoolTensor",
}

_state: dict[str, Any] = {"enabled": False, "mode": None, "saved": {}}


def _is_cuda_device(device: Any) -> bool:
    if isinstance(device, int) and not isinstance(device, bool):
        return True
    if isinstance(device, str):
        return device.startswith("cuda")
    if isinstance(device, torch.device):
        return device.type == "cuda"
    return False


def _map_device(device: Any) -> Any:
    return torch.device("cpu") if _is_cuda_device(device) else device


class _CudaToCpuMode(TorchFunctionMode):
    """Redirects CUDA device requests to the CPU and reports CUDA tensor types."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: D401
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            return _CUDA_TYPE_NAMES.get(args[0].dtype, "torch.cuda.Tensor")
        if func is torch.Tensor.cuda:
            return args[0]
        if "device" in kwargs:
            kwargs["device"] = _map_device(kwargs["device"])
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], torch.device("cpu"), *args[2:])
        return func(*args, **kwargs)


class _HostEvent:
    """A host-side stand-in for ``torch.cuda.Event`` (records wall time)."""

    def __init__(self, enable_timing: bool = False, **_: Any) -> None:
        self._t = 0.0

    def record(self, stream: Any = None) -> None:
        """Remember the current time."""
        self._t = time.perf_counter()

    def synchronize(self) -> None:
        """Nothing to wait for on the host."""

    def wait(self, stream: Any = None) -> None:
        """Nothing to wait for on the host."""

    def query(self) -> bool:
        """Host work is always complete."""
        return True

    def elapsed_time(self, end: _HostEvent) -> float:
        """Milliseconds between two recorded events."""
        return (end._t - self._t) * 1000.0


class _HostStream:
    """A host-side stand-in for ``torch.cuda.Stream``: work is already ordered."""

    def __init__(self, *_: Any, **__: Any) -> None:
        pass

    def wait_stream(self, other: Any) -> None:
        """Host work is sequential."""

    def wait_event(self, event: Any) -> None:
        """Host work is sequential."""

    def synchronize(self) -> None:
        """Host work is sequential."""

    def record_event(self, event: Any = None) -> _HostEvent:
        """Record an event on this stream."""
        event = event or _HostEvent()
        event.record()
        return event


_DEFAULT_STREAM = _HostStream()


def _get_rng_state(device: Any = "cuda", clone: bool = False, graph_safe: bool = False) -> torch.Tensor:
    return torch.get_rng_state()


def _set_rng_state(new_state: torch.Tensor, device: Any = -1, graph_safe: bool = False) -> None:
    torch.set_rng_state(new_state)


def _cuda_patches() -> dict[str, Callable[..., Any] | Any]:
    """Attribute name in ``torch.cuda`` -> host replacement."""
    return {
        "current_device": lambda: 0,
        "device_count": lambda: 1,
        "set_device": lambda device: None,
        "synchronize": lambda device=None: None,
        "empty_cache": lambda: None,
        # torch.manual_seed itself calls torch.cuda.manual_seed_all, so these
        # must seed the CPU generator directly rather than through torch.manual_seed.
        "manual_seed": lambda seed: torch.default_generator.manual_seed(int(seed)),
        "manual_seed_all": lambda seed: torch.default_generator.manual_seed(int(seed)),
        "get_rng_state": lambda device="cuda": torch.get_rng_state(),
        "set_rng_state": lambda state, device="cuda": torch.set_rng_state(state),
        "Event": _HostEvent,
        "Stream": _HostStream,
        "current_stream": lambda device=None: _DEFAULT_STREAM,
        "default_stream": lambda device=None: _DEFAULT_STREAM,
        "stream": lambda stream=None: contextlib.nullcontext(),
        "set_stream": lambda stream: None,
        "memory_allocated": lambda device=None: 0,
        "max_memory_allocated": lambda device=None: 0,
        "reset_peak_memory_stats": lambda device=None: None,
    }


def _backward_under_mode(original: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap torch's autograd engine entry so backward functions see the CUDA-to-CPU mode.

    ``torch.autograd.backward`` (and ``Tensor.backward``) is dispatched through
    ``__torch_function__``, and a mode is popped from the stack while it handles a
    call; the engine captures that (empty) stack, so megatron-core's backward-time
    allocations on ``torch.cuda.current_device()`` (e.g. the reduce-scatter in the
    backward of the TP gather used when there are fewer query groups than TP ranks)
    would ask for a real GPU. Re-pushing the mode around the engine call fixes that.
    """

    def run_backward(*args: Any, **kwargs: Any) -> Any:
        mode = _state["mode"]
        if mode is None or mode in torch.overrides._get_current_function_mode_stack():
            return original(*args, **kwargs)
        with mode:
            return original(*args, **kwargs)

    return run_backward


def _megatron_patches() -> list[tuple[Any, str, Any]]:
    """(module, attribute, replacement) for megatron-core's CUDA helpers and torch's backward entry."""
    from megatron.core.tensor_parallel import random as mc_random

    return [
        (mc_random, "_get_cuda_rng_state", _get_rng_state),
        (mc_random, "_set_cuda_rng_state", _set_rng_state),
        # backward() and grad() call the engine through this module-level name.
        (torch.autograd, "_engine_run_backward", _backward_under_mode(torch.autograd._engine_run_backward)),
    ]


def enable() -> None:
    """Switch the emulation on (idempotent); refuses when CUDA is available."""
    if _state["enabled"]:
        return
    if torch.cuda.is_available():
        raise RuntimeError("CPU emulation of CUDA must not be enabled when CUDA is available")
    saved = _state["saved"]
    for name, replacement in _cuda_patches().items():
        saved[(torch.cuda, name)] = getattr(torch.cuda, name, None)
        setattr(torch.cuda, name, replacement)
    saved[(torch.cuda.random, "get_rng_state")] = torch.cuda.random.get_rng_state
    torch.cuda.random.get_rng_state = _cuda_patches()["get_rng_state"]
    for module, name, replacement in _megatron_patches():
        saved[(module, name)] = getattr(module, name)
        setattr(module, name, replacement)
    mode = _CudaToCpuMode()
    mode.__enter__()
    _state.update(enabled=True, mode=mode)


def disable() -> None:
    """Undo :func:`enable` (used by tests)."""
    if not _state["enabled"]:
        return
    _state["mode"].__exit__(None, None, None)
    for (module, name), original in _state["saved"].items():
        setattr(module, name, original)
    _state.update(enabled=False, mode=None, saved={})


def is_enabled() -> bool:
    """Whether the CUDA calls are currently emulated on the CPU."""
    return bool(_state["enabled"])


@contextlib.contextmanager
def emulated() -> Iterator[None]:
    """Context manager form of :func:`enable` / :func:`disable`."""
    was = is_enabled()
    enable()
    try:
        yield
    finally:
        if not was:
            disable()
