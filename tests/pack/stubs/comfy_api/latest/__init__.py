"""Stand-in for comfy_api.latest: ComfyExtension and the io module's node schema types."""

from __future__ import annotations

from abc import ABC, abstractmethod

from . import io


class ComfyExtension(ABC):
    async def on_load(self) -> None:
        return None

    @abstractmethod
    async def get_node_list(self) -> list[type[io.ComfyNode]]: ...


__all__ = ["ComfyExtension", "io"]
