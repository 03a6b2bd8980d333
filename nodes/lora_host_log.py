"""Names of the LoRA tensors ComfyUI drops before it builds any patch, read from its own log records.

`comfy.sd.load_lora_for_models` (what LoraLoader and LoraLoaderModelOnly run) first builds
a key map with `comfy.lora.model_lora_keys_unet`, which reads the model's state_dict. Then
`comfy.lora.load_lora` keeps only the LoRA tensors the key map names and logs each other
one as "lora key not loaded: KEY" on the root logger. Only the kept tensors reach the
patcher's add_patches. ComfyUI 0.33.0 offers no hook between the two steps and returns no
list of dropped keys, so the pack observes those log records instead.

The observation is scoped to one LoRA load on one thread. L2PModel.state_dict opens it
when its caller is `comfy.lora.model_lora_keys_unet`, and the add_patches of a patcher
over the same model closes it. Other state_dict calls cannot close it, because the host's
`ModelPatcher.clone` reads the state_dict between the two steps. A load that adds no patch
(the host's bypass loader with adapters only, its hook loader, or a failed load) leaves
the observation open until the next LoRA load or add_patches on that thread. The next
LoRA load discards what it collected. The filter never drops, reorders or changes a
record: it copies the key and returns True.

This module does not import comfy, so it runs without the host.
"""

from __future__ import annotations

import logging
import threading
import weakref

NOT_LOADED_PREFIX = "lora key not loaded: "

# Host functions that build the LoRA key map and log the keys outside it.
HOST_KEY_MAP_MODULE = "comfy.lora"
HOST_KEY_MAP_FUNCTION = "model_lora_keys_unet"
HOST_LOADER_FUNCTION = "load_lora"


class DroppedLoraKeys(logging.Filter):
    """Root-logger filter that copies the keys of the host's "lora key not loaded" records per thread.

    It is attached to the root logger only while at least one thread has an open observation.
    """

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._keys_by_thread: dict[int, list[str]] = {}
        self._model_by_thread: dict[int, weakref.ref] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        # The root logger calls its filters on the thread that logs, even with logging.logThreads off.
        keys = self._keys_by_thread.get(threading.get_ident())
        if keys is not None and is_dropped_key_record(record):
            keys.append(record.getMessage().removeprefix(NOT_LOADED_PREFIX))
        return True

    def open(self, model) -> None:
        """Start collecting on the current thread for a LoRA load onto `model`.

        It discards what an earlier, unclosed observation on this thread collected.
        """
        thread = threading.get_ident()
        with self._lock:
            if not self._keys_by_thread:
                logging.getLogger().addFilter(self)
            self._keys_by_thread[thread] = []
            self._model_by_thread[thread] = weakref.ref(model)

    def close(self, model) -> list[str] | None:
        """Stop collecting on the current thread and return the keys collected for `model`.

        Returns None when nothing was open on this thread or the open observation was for another model.
        """
        thread = threading.get_ident()
        with self._lock:
            keys = self._keys_by_thread.pop(thread, None)
            observed_model = self._model_by_thread.pop(thread, None)
            if keys is not None and not self._keys_by_thread:
                logging.getLogger().removeFilter(self)
        if observed_model is None or observed_model() is not model:
            return None
        return keys


def is_dropped_key_record(record: logging.LogRecord) -> bool:
    """Return True for the record `comfy.lora.load_lora` logs for a LoRA tensor outside the key map."""
    return (
        record.name == "root"
        and record.funcName == HOST_LOADER_FUNCTION
        and record.getMessage().startswith(NOT_LOADED_PREFIX)
    )


def is_host_key_map_frame(frame) -> bool:
    """Return True when `frame` runs `comfy.lora.model_lora_keys_unet`, the first step of a LoRA load."""
    return (
        frame is not None
        and frame.f_code.co_name == HOST_KEY_MAP_FUNCTION
        and frame.f_globals.get("__name__") == HOST_KEY_MAP_MODULE
    )


DROPPED_LORA_KEYS = DroppedLoraKeys()


def observe_state_dict_call(model, caller_frame) -> None:
    """Open the observation when `caller_frame` is the host's LoRA key map reading `model`'s state_dict."""
    if is_host_key_map_frame(caller_frame):
        DROPPED_LORA_KEYS.open(model)


def take_dropped_lora_keys(model) -> list[str] | None:
    """Close the current thread's observation and return the LoRA keys the host dropped while loading onto `model`.

    Returns None when no LoRA load onto `model` was observed on this thread, for example
    when a model merge node, not a LoRA loader, adds the patches.
    """
    return DROPPED_LORA_KEYS.close(model)
