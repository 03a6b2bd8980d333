"""L2P pixel-space image generation in pure PyTorch (no ComfyUI import).

Entry points:
- `load_model(path, *, device="cpu", dtype=torch.float32)` returns an `L2PTransformer` whose
  `model(x, sigma, context)` is the flow velocity ε − x₀ and whose `.config` is an `L2PConfig`.
- `sample(model, positive, negative, *, width, height, seed, ...)` returns images in [-1, 1].
- `inspect_checkpoint(path)` identifies a file from its headers alone.
- Low VRAM: `load_model(..., weight_storage="fp8_e4m3fn")` or `convert_to_fp8(model)` store the
  blocks' large weights in float8; `load_model(..., resident_blocks=N)` or
  `stream_blocks(model, device)` stream the blocks from CPU memory; `device_memory(config, ...)`
  estimates the device bytes of each mode.
- `img2img`, `inpaint` and `outpaint` edit images of any size and keep every unmasked
  pixel of the input exactly (see `l2p_core.editing`).
"""

from .block_streaming import BlockStreamer, stream_blocks
from .config import DecoderConfig, L2PConfig
from .editing import img2img, inpaint, outpaint
from .errors import CheckpointError, L2PError, SamplingCancelled, SamplingError, UnsupportedCheckpointError
from .fp8 import Float8Linear, convert_to_fp8
from .images import from_uint8, to_uint8
from .layers import TORCH_OPERATIONS
from .loader import CheckpointInfo, inspect_checkpoint, load_model
from .memory_budget import device_memory
from .network import L2PTransformer
from .sampling import draw_noise, euler, guided_velocity, sample
from .schedule import flow_sigmas, shift_sigma

__all__ = [
    "TORCH_OPERATIONS",
    "BlockStreamer",
    "CheckpointError",
    "CheckpointInfo",
    "DecoderConfig",
    "Float8Linear",
    "L2PConfig",
    "L2PError",
    "L2PTransformer",
    "SamplingCancelled",
    "SamplingError",
    "UnsupportedCheckpointError",
    "convert_to_fp8",
    "device_memory",
    "draw_noise",
    "euler",
    "flow_sigmas",
    "from_uint8",
    "guided_velocity",
    "img2img",
    "inpaint",
    "inspect_checkpoint",
    "load_model",
    "outpaint",
    "sample",
    "shift_sigma",
    "stream_blocks",
    "to_uint8",
]
