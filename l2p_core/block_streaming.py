"""Block streaming: keep the transformer blocks in CPU memory and copy a few at a time to the GPU.

The 34 blocks of the 1K model (2 noise-refiner, 2 context-refiner, 30 joint) hold about
98 % of its weights. With streaming, only the embedders, pad tokens and local decoder stay
on the compute device. Each block is copied in just before it runs, and at most
`resident_blocks` blocks are on the device at any moment. On CUDA the block's CPU copy is
pinned and the next block is copied on a side stream while the current one computes.

Any call order works: a block that is not resident is loaded when it is called, whatever
was predicted. The prediction of the next block is the block that followed this one last
time (in the index order of noise_refiner, context_refiner, layers before anything was
observed). Every block is evicted when the network's forward pass returns or raises, so
the local decoder runs with the blocks' memory free.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections import OrderedDict
from collections.abc import Iterator

import torch
from torch import nn

logger = logging.getLogger(__name__)

BLOCK_STACKS = ("noise_refiner", "context_refiner", "layers")
DEFAULT_RESIDENT_BLOCKS = 2


class BlockStreamer:
    """Streams the blocks of one L2PTransformer to `device`, holding at most `resident_blocks` there.

    `attach()` moves everything but the blocks to `device`, moves the blocks to CPU memory
    (pinned when `device` is CUDA) and wraps the blocks' and the network's forward methods;
    `detach()` evicts every block and removes the wrappers, leaving the blocks in CPU memory.
    `model.to(...)` while attached would move the blocks behind the streamer's back: detach
    first.
    """

    def __init__(
        self,
        model: nn.Module,
        device: torch.device | str,
        *,
        resident_blocks: int = DEFAULT_RESIDENT_BLOCKS,
        prefetch: bool = True,
    ) -> None:
        check_resident_blocks(resident_blocks)
        device = torch.device(device)
        if device.type == "meta":
            raise ValueError(
                "Blocks cannot be streamed to the 'meta' device, which stores no data; use 'cuda' or 'cpu'."
            )
        self.model = model
        self.device = device
        self.resident_blocks = resident_blocks
        self.prefetch = prefetch
        self.blocks: dict[str, nn.Module] = {
            f"{stack}.{index}": block for stack in BLOCK_STACKS for index, block in enumerate(getattr(model, stack))
        }
        self._order = list(self.blocks)
        self._storage: dict[str, dict[str, torch.Tensor]] = {}
        # key -> (device copies by parameter name, CUDA event recorded after the copy or None)
        self._resident: OrderedDict[str, tuple[dict[str, torch.Tensor], object]] = OrderedDict()
        self._successor: dict[str, str] = {}
        self._previous: str | None = None
        self._first: str | None = None
        self._stream = None
        self._attached = False
        self._active: str | None = None

    # Set-up

    def attach(self) -> BlockStreamer:
        if self._attached:
            return self
        if getattr(self.model, "block_streamer", None) is not None:
            raise RuntimeError("This network already streams its blocks; detach its block_streamer first.")
        cuda = self.device.type == "cuda"
        if cuda:
            self._stream = torch.cuda.Stream(self.device)

        block_tensors = set()
        for key, block in self.blocks.items():
            storage = {}
            for name, tensor in _tensors(block):
                stored = tensor.data.to("cpu")
                if cuda:
                    stored = stored.pin_memory()
                tensor.data = stored
                storage[name] = stored
                block_tensors.add(id(tensor))
            self._storage[key] = storage
        for _, tensor in _tensors(self.model):
            if id(tensor) not in block_tensors:
                tensor.data = tensor.data.to(self.device)

        for key, block in self.blocks.items():
            block.forward = functools.partial(self._run_block, key, block.forward)
        self.model.forward = functools.partial(self._run_network, self.model.forward)
        self.model.block_streamer = self
        self._attached = True
        return self

    def detach(self) -> None:
        if not self._attached:
            return
        self.evict_all()
        for block in self.blocks.values():
            del block.forward
        del self.model.forward
        self.model.block_streamer = None
        self._attached = False

    def __enter__(self) -> BlockStreamer:
        return self.attach()

    def __exit__(self, *exc_info: object) -> None:
        self.detach()

    # Residency

    def resident(self) -> list[str]:
        """Return the names of the blocks on the device (loaded or being loaded), least recently used first."""
        return list(self._resident)

    def evict_all(self) -> None:
        for key in list(self._resident):
            self._evict(key)

    def _evict(self, key: str) -> None:
        copies, _ = self._resident.pop(key)
        for name, tensor in _tensors(self.blocks[key]):
            tensor.data = self._storage[key][name]
        if self._stream is not None:
            # The copies were allocated on the side stream and used on the compute stream.
            current = torch.cuda.current_stream(self.device)
            for copy in copies.values():
                copy.record_stream(current)

    def _make_room(self, keep: str | None) -> bool:
        """Evict least recently used blocks other than `keep` until one more fits; return False if none can go."""
        while len(self._resident) >= self.resident_blocks:
            victims = [key for key in self._resident if key != keep and key != self._active]
            if not victims:
                return False
            self._evict(victims[0])
        return True

    def _start_copy(self, key: str) -> None:
        # NOTE: the CUDA branch (pinned storage, side-stream copy, event) has not run on a GPU
        # yet. The tests run the same bookkeeping with the CPU as the compute device.
        copies = {}
        stream = contextlib.nullcontext() if self._stream is None else torch.cuda.stream(self._stream)
        with stream:
            for name, stored in self._storage[key].items():
                copies[name] = torch.empty_like(stored, device=self.device).copy_(
                    stored, non_blocking=stored.is_pinned()
                )
        event = None
        if self._stream is not None:
            event = torch.cuda.Event()
            event.record(self._stream)
        self._resident[key] = (copies, event)

    def _activate(self, key: str) -> None:
        if key not in self._resident:
            self._make_room(keep=None)
            self._start_copy(key)
        self._resident.move_to_end(key)
        copies, event = self._resident[key]
        if event is not None:
            torch.cuda.current_stream(self.device).wait_event(event)
        for name, tensor in _tensors(self.blocks[key]):
            tensor.data = copies[name]

    def _prefetch_next(self, key: str) -> None:
        if not self.prefetch:
            return
        following = self._successor.get(key)
        if following is None:
            position = self._order.index(key) + 1
            following = self._order[position] if position < len(self._order) else None
        if following is None or following in self._resident:
            return
        if self._make_room(keep=key):
            self._start_copy(following)

    # Wrapped forward methods

    def _run_block(self, key: str, forward, *args, **kwargs):
        try:
            self._activate(key)
            self._active = key
            self._prefetch_next(key)
            output = forward(*args, **kwargs)
        except BaseException:
            self.evict_all()
            raise
        finally:
            self._active = None
        if self._previous is not None:
            self._successor[self._previous] = key
        else:
            self._first = key
        self._previous = key
        return output

    def _run_network(self, forward, *args, **kwargs):
        self._previous = None
        if self.prefetch and self._first is not None and self._first not in self._resident:
            if self._make_room(keep=None):
                self._start_copy(self._first)
        try:
            return forward(*args, **kwargs)
        finally:
            self.evict_all()


def check_resident_blocks(resident_blocks: object) -> None:
    if isinstance(resident_blocks, bool) or not isinstance(resident_blocks, int) or resident_blocks < 1:
        raise ValueError(
            f"resident_blocks must be a whole number ≥ 1 (blocks kept on the device at once); got {resident_blocks!r}."
        )


def _tensors(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    yield from module.named_parameters()
    yield from module.named_buffers()


def stream_blocks(
    model: nn.Module,
    device: torch.device | str,
    *,
    resident_blocks: int = DEFAULT_RESIDENT_BLOCKS,
    prefetch: bool = True,
) -> BlockStreamer:
    """Attach a BlockStreamer to `model` and return it; use it as a context manager to detach at the end.

    >>> with l2p_core.stream_blocks(model, "cuda", resident_blocks=2):
    ...     images = l2p_core.sample(model, ...)
    """
    return BlockStreamer(model, device, resident_blocks=resident_blocks, prefetch=prefetch).attach()
