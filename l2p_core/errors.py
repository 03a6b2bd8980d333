"""Exception types raised by l2p_core.

Every error names the offending value and what to do next, so callers (the ComfyUI nodes,
the command line) can show the message to the user unchanged.
"""


class L2PError(Exception):
    """Base class of every error that l2p_core raises on purpose."""


class CheckpointError(L2PError, ValueError):
    """A file that cannot be loaded as an L2P model: wrong kind, corrupt, truncated or incomplete."""


class UnsupportedCheckpointError(CheckpointError):
    """An L2P checkpoint that is recognised but whose variant this version cannot run yet."""


class SamplingError(L2PError, RuntimeError):
    """Sampling stopped because the state became invalid (NaN or Inf)."""


class SamplingCancelled(L2PError):
    """Sampling stopped because the caller's cancel check asked for it."""


# ComfyUI imports a node pack under its folder path, so the host would report these types
# as '/path/to/ComfyUI-L2P.l2p_core.errors.CheckpointError'. A fixed module name reads better.
for _error_type in (L2PError, CheckpointError, UnsupportedCheckpointError, SamplingError, SamplingCancelled):
    _error_type.__module__ = "l2p_core.errors"
