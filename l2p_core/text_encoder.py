"""Qwen3 text encoder for L2P captions: file discovery, loading and prompt encoding.

Prompts are encoded as the reference prompt embedder does (DiffSynth-Studio
`ZImageUnit_PromptEmbedder`, which takes the same steps as ComfyUI's Z-Image text encoder).
The prompt goes through the Qwen3 chat template with thinking enabled and is right-padded
and truncated to 512 tokens. The features are the hidden state after the second-to-last
decoder layer (`hidden_states[-2]`, before the final norm) without the padding rows.

`transformers` is an optional dependency (the `cli` extra), imported on first use, so the
rest of l2p_core works without it.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

from .errors import CheckpointError, L2PError
from .safetensors_files import TensorEntry, TensorReader, read_tensor_entries

logger = logging.getLogger(__name__)

MAX_PROMPT_TOKENS = 512
# `hidden_states` contains the embeddings and then one entry per decoder layer, the last one
# taken after the final norm. Index -2 is therefore the output of the second-to-last layer.
HIDDEN_STATE_INDEX = -2

# Qwen3 settings that no tensor carries, from Qwen3-4B's config.json (Z-Image-Turbo's
# text_encoder/config.json has the same values). They are used only for the single-file form.
QWEN3_ROPE_THETA = 1_000_000.0
QWEN3_RMS_NORM_EPS = 1e-6
QWEN3_MAX_POSITION_EMBEDDINGS = 40960

INSTALL_HINT = 'pip install "comfyui-l2p[cli]"'
TOKENIZER_SOURCE = (
    "the tokenizer/ folder of the Tongyi-MAI/Z-Image-Turbo repository on Hugging Face "
    "(https://huggingface.co/Tongyi-MAI/Z-Image-Turbo/tree/main/tokenizer)"
)

HF_PREFIX = "model."
# The LM head that a Qwen3ForCausalLM file may add to the base model, unused by the encoder.
IGNORED_TENSORS = frozenset({"lm_head.weight"})
# Tensors in other dtypes (fp8, int8) come from quantised files, which this loader cannot read.
SUPPORTED_DTYPES = frozenset({"F16", "BF16", "F32"})
LAYER_KEY = re.compile(r"^layers\.(\d+)\.")


class MissingDependencyError(L2PError, ImportError):
    """An optional package that this feature needs is not installed."""


class TokenizerNotFoundError(L2PError, FileNotFoundError):
    """No tokenizer files were found in any of the folders searched."""


class TextEncoderError(CheckpointError):
    """A text-encoder file or tokenizer that cannot be used for L2P captions."""


def import_transformers() -> ModuleType:
    """Import `transformers`, raising MissingDependencyError with the install command when it is absent."""
    try:
        import transformers
    except ImportError as error:
        raise MissingDependencyError(
            "Encoding prompts needs the 'transformers' package, which is not installed "
            f"({error}). Install it with: {INSTALL_HINT}"
        ) from error
    return transformers


@dataclass(frozen=True)
class Qwen3Sizes:
    """Sizes of a Qwen3 decoder, derived from its tensor shapes."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    attention_bias: bool

    def __post_init__(self) -> None:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"{self.num_attention_heads} query heads are not a multiple of "
                f"{self.num_key_value_heads} key/value heads"
            )

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Return the shape of every tensor of `Qwen3Model`, under names without the `model.` prefix."""
        hidden, q_width, kv_width = (
            self.hidden_size,
            self.num_attention_heads * self.head_dim,
            self.num_key_value_heads * self.head_dim,
        )
        shapes: dict[str, tuple[int, ...]] = {
            "embed_tokens.weight": (self.vocab_size, hidden),
            "norm.weight": (hidden,),
        }
        for index in range(self.num_hidden_layers):
            layer = f"layers.{index}"
            shapes |= {
                f"{layer}.input_layernorm.weight": (hidden,),
                f"{layer}.post_attention_layernorm.weight": (hidden,),
                f"{layer}.self_attn.q_proj.weight": (q_width, hidden),
                f"{layer}.self_attn.k_proj.weight": (kv_width, hidden),
                f"{layer}.self_attn.v_proj.weight": (kv_width, hidden),
                f"{layer}.self_attn.o_proj.weight": (hidden, q_width),
                f"{layer}.self_attn.q_norm.weight": (self.head_dim,),
                f"{layer}.self_attn.k_norm.weight": (self.head_dim,),
                f"{layer}.mlp.gate_proj.weight": (self.intermediate_size, hidden),
                f"{layer}.mlp.up_proj.weight": (self.intermediate_size, hidden),
                f"{layer}.mlp.down_proj.weight": (hidden, self.intermediate_size),
            }
            if self.attention_bias:
                shapes |= {
                    f"{layer}.self_attn.q_proj.bias": (q_width,),
                    f"{layer}.self_attn.k_proj.bias": (kv_width,),
                    f"{layer}.self_attn.v_proj.bias": (kv_width,),
                    f"{layer}.self_attn.o_proj.bias": (hidden,),
                }
        return shapes


@dataclass(frozen=True)
class TextEncoderInfo:
    """A Qwen3 encoder checkpoint as its headers describe it: sizes, tensors and config source."""

    path: Path
    sizes: Qwen3Sizes
    # Tensors by `Qwen3Model` name (no `model.` prefix), possibly spread over several shards.
    tensors: dict[str, TensorEntry]
    # The Hugging Face folder whose config.json describes the model, or None for a single file.
    config_folder: Path | None

    @property
    def hidden_size(self) -> int:
        return self.sizes.hidden_size


def inspect_text_encoder(path: str | Path) -> TextEncoderInfo:
    """Identify and validate a Qwen3 encoder from its headers, without reading any tensor.

    `path` is a single safetensors file with Hugging Face key names (such as ComfyUI's
    `qwen_3_4b.safetensors`), a Hugging Face model folder, or any shard or the index of
    one. Raises TextEncoderError naming the file and what is wrong with it.
    """
    path = Path(path)
    weights = _weights_file(path)
    entries = read_tensor_entries(weights)
    tensors = _strip_prefix(path, entries)
    sizes = _sizes_from_shapes(path, tensors)
    _check_tensors(path, tensors, sizes)

    config_folder = weights.parent if _has_qwen3_config(weights.parent) else None
    if config_folder is not None:
        _check_config_json(config_folder, sizes)
    return TextEncoderInfo(path, sizes, tensors, config_folder)


def check_caption_width(info: TextEncoderInfo, cap_feat_dim: int) -> None:
    """Raise TextEncoderError unless the encoder's hidden size is the L2P model's caption width."""
    if info.hidden_size != cap_feat_dim:
        raise TextEncoderError(
            f"The text encoder '{info.path}' produces {info.hidden_size}-wide features, but the L2P model "
            f"takes {cap_feat_dim}-wide caption features. L2P was trained on Qwen3-4B (hidden size 2560), so "
            "use that encoder (for example qwen_3_4b.safetensors)."
        )


def find_tokenizer(encoder_path: str | Path, tokenizer_dir: str | Path | None = None) -> Path:
    """Return the folder of the tokenizer to use with the encoder at `encoder_path`.

    An explicit `tokenizer_dir` must contain tokenizer files. Otherwise the search covers the
    encoder's folder, its `tokenizer/` subfolder and a sibling `../tokenizer` folder (the
    Z-Image-Turbo repository has `text_encoder/` and `tokenizer/` side by side).
    """
    if tokenizer_dir is not None:
        folder = Path(tokenizer_dir)
        if not _has_tokenizer_files(folder):
            raise TokenizerNotFoundError(
                f"The tokenizer folder '{folder}' does not exist or has no tokenizer.json "
                f"(or vocab.json and merges.txt). Download {TOKENIZER_SOURCE} and pass that folder."
            )
        return folder

    encoder_path = Path(encoder_path)
    encoder_folder = encoder_path if encoder_path.is_dir() else encoder_path.parent
    candidates = [encoder_folder, encoder_folder / "tokenizer", encoder_folder.parent / "tokenizer"]
    for folder in candidates:
        if _has_tokenizer_files(folder):
            return folder
    searched = ", ".join(f"'{folder}'" for folder in candidates)
    raise TokenizerNotFoundError(
        f"No tokenizer found for the text encoder '{encoder_path}'. Searched {searched} for tokenizer.json "
        f"(or vocab.json and merges.txt). Download {TOKENIZER_SOURCE}, put it next to the encoder "
        "as 'tokenizer/', or pass its folder explicitly (--tokenizer on the command line)."
    )


class TextEncoder:
    """A loaded Qwen3 model and tokenizer that turn prompts into L2P caption features."""

    def __init__(self, model: torch.nn.Module, tokenizer, info: TextEncoderInfo) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.info = info

    @property
    def hidden_size(self) -> int:
        return self.info.hidden_size

    def encode(self, prompt: str) -> torch.Tensor:
        """Encode one prompt into caption features [L, hidden_size], L ≤ 512, on the model's device and dtype."""
        text = self._apply_chat_template(prompt)
        tokens = self.tokenizer(
            [text], padding="max_length", max_length=MAX_PROMPT_TOKENS, truncation=True, return_tensors="pt"
        )
        full_length = len(self.tokenizer(text)["input_ids"])
        if full_length > MAX_PROMPT_TOKENS:
            logger.warning(
                "The prompt is %d tokens long with its chat template, so only the first %d are used (the reference "
                "pipeline truncates the same way).", full_length, MAX_PROMPT_TOKENS,
            )  # fmt: skip

        device = self.model.get_input_embeddings().weight.device
        input_ids = tokens["input_ids"].to(device)
        attention_mask = tokens["attention_mask"].to(device)
        with torch.inference_mode():
            output = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        features = output.hidden_states[HIDDEN_STATE_INDEX][0]
        return features[attention_mask[0].bool()]

    def _apply_chat_template(self, prompt: str) -> str:
        messages = [{"role": "user", "content": prompt}]
        try:
            text = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True, enable_thinking=True
            )
        except ValueError as error:
            raise TextEncoderError(
                f"The tokenizer in '{self.tokenizer.name_or_path}' cannot apply a chat template ({error}). "
                f"Use {TOKENIZER_SOURCE}."
            ) from error

        expected = f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
        if text != expected:
            logger.warning(
                "The tokenizer's chat template gives %r instead of the Qwen3 form %r that L2P was trained with, "
                "so images may follow the prompt less well.", text[:200], expected[:200],
            )  # fmt: skip
        return text


def load_text_encoder(
    path: str | Path,
    *,
    tokenizer_dir: str | Path | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    cap_feat_dim: int | None = None,
) -> TextEncoder:
    """Load a Qwen3 encoder (single file or Hugging Face folder) and its tokenizer.

    Every check runs before any weight is read: the file layout, the caption width against
    `cap_feat_dim` when given, the tokenizer's presence and the `transformers` import.
    Weights are read through the file mapping, cast to `dtype` on the CPU and then moved to
    `device`.
    """
    info = inspect_text_encoder(path)
    if cap_feat_dim is not None:
        check_caption_width(info, cap_feat_dim)
    tokenizer_folder = find_tokenizer(info.path, tokenizer_dir)
    transformers = import_transformers()

    tokenizer = _load_tokenizer(transformers, tokenizer_folder)
    config = _transformers_config(transformers, info)
    device = torch.device(device)
    with TensorReader() as reader:
        state = {name: reader.read(entry) for name, entry in info.tensors.items()}
        # Loaded on the CPU, then moved, because a `device_map` would make `accelerate` a dependency.
        model, loading = transformers.Qwen3Model.from_pretrained(
            None, config=config, state_dict=state, output_loading_info=True, **{_dtype_keyword(transformers): dtype}
        )
    missing = sorted(loading["missing_keys"])
    if missing:
        raise TextEncoderError(
            f"Loading '{info.path}' left {len(missing)} Qwen3 weight(s) without a value: {_listing(missing)}. "
            "Download the file again."
        )
    model.to(device).eval()

    sizes = info.sizes
    logger.info(
        "Loaded Qwen3 text encoder (hidden %d, %d layers, %d/%d heads) as %s on %s from %s, tokenizer from %s",
        sizes.hidden_size, sizes.num_hidden_layers, sizes.num_attention_heads, sizes.num_key_value_heads,
        str(dtype).removeprefix("torch."), device, info.path, tokenizer_folder,
    )  # fmt: skip
    return TextEncoder(model, tokenizer, info)


def _weights_file(path: Path) -> Path:
    """Return the file to read headers from: the path itself, or the weights inside a folder."""
    if not path.exists():
        raise TextEncoderError(f"The text encoder '{path}' does not exist. Check the path.")
    if not path.is_dir():
        return path
    for name in ("model.safetensors.index.json", "model.safetensors"):
        if (path / name).is_file():
            return path / name
    files = sorted(path.glob("*.safetensors"))
    if len(files) == 1:
        return files[0]
    raise TextEncoderError(
        f"The text-encoder folder '{path}' has no model.safetensors or model.safetensors.index.json "
        f"(it has {len(files)} other .safetensors file(s)). Pass the encoder file itself, or a "
        "Hugging Face model folder such as Z-Image-Turbo's text_encoder/."
    )


def _strip_prefix(path: Path, entries: dict[str, TensorEntry]) -> dict[str, TensorEntry]:
    """Rename `model.`-prefixed keys to `Qwen3Model` names and drop the unused LM head."""
    names = [name for name in entries if name not in IGNORED_TENSORS]
    prefixed = "embed_tokens.weight" not in entries and f"{HF_PREFIX}embed_tokens.weight" in entries
    tensors = {}
    for name in names:
        if prefixed and name.startswith(HF_PREFIX):
            tensors[name.removeprefix(HF_PREFIX)] = entries[name]
        else:
            tensors[name] = entries[name]

    if "embed_tokens.weight" not in tensors:
        raise TextEncoderError(
            f"'{path}' is not a Qwen3 text encoder: it has neither 'model.embed_tokens.weight' nor "
            f"'embed_tokens.weight' (its tensors include {_listing(sorted(entries), 5)}). "
            "Pass Qwen3-4B, for example ComfyUI's qwen_3_4b.safetensors or Z-Image-Turbo's text_encoder/ folder."
        )
    return tensors


def _sizes_from_shapes(path: Path, tensors: dict[str, TensorEntry]) -> Qwen3Sizes:
    layer_indices = {int(match[1]) for name in tensors if (match := LAYER_KEY.match(name))}
    if not layer_indices:
        raise TextEncoderError(
            f"'{path}' has token embeddings but no 'layers.N.' decoder layers, so it is not a Qwen3 model."
        )
    if "layers.0.self_attn.q_norm.weight" not in tensors:
        raise TextEncoderError(
            f"'{path}' has no 'layers.0.self_attn.q_norm.weight', so it is not Qwen3 (Qwen2 and Qwen2.5 have "
            "no query/key norm). L2P needs Qwen3-4B."
        )

    try:
        vocab_size, hidden_size = tensors["embed_tokens.weight"].shape
        head_dim = tensors["layers.0.self_attn.q_norm.weight"].shape[0]
        q_rows = tensors["layers.0.self_attn.q_proj.weight"].shape[0]
        kv_rows = tensors["layers.0.self_attn.k_proj.weight"].shape[0]
        intermediate_size = tensors["layers.0.mlp.gate_proj.weight"].shape[0]
    except (KeyError, ValueError) as error:
        raise TextEncoderError(
            f"'{path}' lacks a Qwen3 tensor or has one of the wrong rank ({error!r}). The file is incomplete "
            "or not Qwen3. Download qwen_3_4b.safetensors again."
        ) from error
    if q_rows % head_dim or kv_rows % head_dim:
        raise TextEncoderError(
            f"'{path}': the q_proj ({q_rows} rows) and k_proj ({kv_rows} rows) widths are not multiples of the "
            f"{head_dim}-wide q_norm, so the head count cannot be derived. The file is not a standard Qwen3 model."
        )

    try:
        return Qwen3Sizes(
            hidden_size=hidden_size,
            num_hidden_layers=max(layer_indices) + 1,
            num_attention_heads=q_rows // head_dim,
            num_key_value_heads=kv_rows // head_dim,
            head_dim=head_dim,
            intermediate_size=intermediate_size,
            vocab_size=vocab_size,
            attention_bias="layers.0.self_attn.q_proj.bias" in tensors,
        )
    except ValueError as error:
        raise TextEncoderError(f"'{path}' has inconsistent Qwen3 shapes: {error}.") from error


def _check_tensors(path: Path, tensors: dict[str, TensorEntry], sizes: Qwen3Sizes) -> None:
    """Require every Qwen3 tensor in its exact shape and a float dtype, and nothing else."""
    expected = sizes.expected_shapes()
    missing = sorted(name for name in expected if name not in tensors)
    if missing:
        raise TextEncoderError(
            f"'{path}' is missing {len(missing)} Qwen3 weight(s): {_listing(missing)}. The file is incomplete "
            "or damaged. Download it again (for a sharded folder, check that every shard is present)."
        )

    wrong = [name for name, shape in expected.items() if tensors[name].shape != shape]
    if wrong:
        details = "; ".join(
            f"'{name}' is {list(tensors[name].shape)}, expected {list(expected[name])}" for name in wrong[:5]
        )
        raise TextEncoderError(f"'{path}' has {len(wrong)} misshapen Qwen3 weight(s): {details}.")

    unexpected = sorted(name for name in tensors if name not in expected)
    if unexpected:
        if any("scale" in name for name in unexpected):
            advice = "Quantised (fp8 scaled) encoders are not supported. Use the bf16 qwen_3_4b.safetensors."
        else:
            advice = "It is a different or modified architecture. Use Qwen3-4B, such as qwen_3_4b.safetensors."
        raise TextEncoderError(
            f"'{path}' has {len(unexpected)} tensor(s) that Qwen3Model does not use: {_listing(unexpected)}. {advice}"
        )

    quantised = sorted(name for name, entry in tensors.items() if entry.dtype not in SUPPORTED_DTYPES)
    if quantised:
        dtypes = sorted({tensors[name].dtype for name in quantised})
        raise TextEncoderError(
            f"'{path}' stores {len(quantised)} tensor(s) as {', '.join(dtypes)} ({_listing(quantised, 3)}). "
            "Only float16, bfloat16 and float32 encoders are supported. Use the bf16 qwen_3_4b.safetensors."
        )


def _has_qwen3_config(folder: Path) -> bool:
    """Return whether `folder` has a Hugging Face config.json of model type qwen3."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        return False
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        logger.warning(
            "Ignoring '%s': it is not valid JSON, so the encoder's settings come from its tensor shapes.", config_path
        )
        return False
    return isinstance(config, dict) and config.get("model_type") == "qwen3"


def _check_config_json(folder: Path, sizes: Qwen3Sizes) -> None:
    """Require config.json to describe the same sizes as the tensors."""
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    fields = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
              "intermediate_size", "vocab_size")  # fmt: skip
    differences = [
        f"{field} {config[field]} in config.json but {getattr(sizes, field)} in the tensors"
        for field in fields
        if field in config and config[field] != getattr(sizes, field)
    ]
    if differences:
        raise TextEncoderError(
            f"'{folder / 'config.json'}' does not match the weights beside it: {'; '.join(differences)}. "
            "Download the folder again so that config.json and the weights come from the same model."
        )


def _transformers_config(transformers: ModuleType, info: TextEncoderInfo):
    """Return the `Qwen3Config`: the folder's config.json, else one built from the tensor shapes."""
    if info.config_folder is not None:
        return transformers.Qwen3Config.from_pretrained(str(info.config_folder), local_files_only=True)
    sizes = info.sizes
    logger.info(
        "No config.json beside '%s': using sizes from its tensor shapes with Qwen3's rope_theta %g and rms_norm_eps %g",
        info.path, QWEN3_ROPE_THETA, QWEN3_RMS_NORM_EPS,
    )  # fmt: skip
    return transformers.Qwen3Config(
        vocab_size=sizes.vocab_size,
        hidden_size=sizes.hidden_size,
        intermediate_size=sizes.intermediate_size,
        num_hidden_layers=sizes.num_hidden_layers,
        num_attention_heads=sizes.num_attention_heads,
        num_key_value_heads=sizes.num_key_value_heads,
        head_dim=sizes.head_dim,
        attention_bias=sizes.attention_bias,
        rope_theta=QWEN3_ROPE_THETA,
        rms_norm_eps=QWEN3_RMS_NORM_EPS,
        max_position_embeddings=QWEN3_MAX_POSITION_EMBEDDINGS,
    )


def _dtype_keyword(transformers: ModuleType) -> str:
    """Return the `from_pretrained` dtype argument's name: transformers 4.56 renamed `torch_dtype` to `dtype`."""
    from packaging.version import Version  # a dependency of transformers

    return "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"


def _load_tokenizer(transformers: ModuleType, folder: Path):
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as error:
        raise TextEncoderError(
            f"Failed to load the tokenizer from '{folder}' ({error}). Use {TOKENIZER_SOURCE}."
        ) from error
    if tokenizer.pad_token_id is None:
        raise TextEncoderError(
            f"The tokenizer in '{folder}' defines no padding token, which the 512-token padding needs. "
            f"Use {TOKENIZER_SOURCE}."
        )
    # The reference pads and truncates at the end. A prompt over 512 tokens therefore loses
    # the chat template's closing tokens, as it does there.
    tokenizer.padding_side = "right"
    tokenizer.truncation_side = "right"
    return tokenizer


def _has_tokenizer_files(folder: Path) -> bool:
    return (folder / "tokenizer.json").is_file() or (
        (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    )


def _listing(names: list[str], limit: int = 8) -> str:
    head = ", ".join(names[:limit])
    return head if len(names) <= limit else f"{head} and {len(names) - limit} more"
