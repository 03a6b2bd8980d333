"""Stand-in for comfy.model_management: CPU devices and no interrupt."""

import torch


def intermediate_device() -> torch.device:
    return torch.device("cpu")


def intermediate_dtype() -> torch.dtype:
    return torch.float32


def processing_interrupted() -> bool:
    return False
