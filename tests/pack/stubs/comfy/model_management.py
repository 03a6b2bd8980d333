"""Stand-in for comfy.model_management: CPU devices, an interrupt flag, and the host's OOM test."""

import torch

interrupt_processing = False


class InterruptProcessingException(BaseException):
    pass


def intermediate_device() -> torch.device:
    return torch.device("cpu")


def intermediate_dtype() -> torch.dtype:
    return torch.float32


def processing_interrupted() -> bool:
    return interrupt_processing


def throw_exception_if_processing_interrupted() -> None:
    global interrupt_processing
    if interrupt_processing:
        interrupt_processing = False
        raise InterruptProcessingException()


def is_oom(error: BaseException) -> bool:
    """Like the host: torch's OOM error, or an accelerator error with an out-of-memory message."""
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error).lower()
    )
