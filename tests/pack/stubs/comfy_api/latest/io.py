"""Stand-in for comfy_api.latest.io: schemas that record their arguments."""

from __future__ import annotations


class Input:
    def __init__(self, id: str, **options) -> None:
        self.id = id
        self.options = options
        self.tooltip = options.get("tooltip")


class Output:
    def __init__(self, id: str | None = None, **options) -> None:
        self.id = id
        self.options = options
        self.tooltip = options.get("tooltip")


def _comfy_type(io_type: str) -> type:
    return type(
        io_type, (), {"io_type": io_type, "Input": type("Input", (Input,), {}), "Output": type("Output", (Output,), {})}
    )


Model = _comfy_type("MODEL")
Conditioning = _comfy_type("CONDITIONING")
Image = _comfy_type("IMAGE")
Mask = _comfy_type("MASK")
Latent = _comfy_type("LATENT")
Int = _comfy_type("INT")
Float = _comfy_type("FLOAT")
String = _comfy_type("STRING")
Boolean = _comfy_type("BOOLEAN")
Combo = _comfy_type("COMBO")


class Schema:
    def __init__(self, node_id: str, **fields) -> None:
        self.node_id = node_id
        self.display_name = fields.pop("display_name", None)
        self.category = fields.pop("category", "sd")
        self.inputs = fields.pop("inputs", [])
        self.outputs = fields.pop("outputs", [])
        self.description = fields.pop("description", "")
        self.fields = fields


class ComfyNode:
    @classmethod
    def GET_SCHEMA(cls) -> Schema:
        return cls.define_schema()


class NodeOutput:
    def __init__(self, *args) -> None:
        self.args = args
