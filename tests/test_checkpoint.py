"""Checkpoint reading: layouts, shard sets, configuration from shapes, and every rejection.

Rejections must happen from the headers alone, before the network is built or any tensor
is read. The `no_tensor_reads` fixture turns either into a test failure.
"""

from __future__ import annotations

import json
import pickle
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import l2p_core
from l2p_core import loader, synthetic
from l2p_core.safetensors_files import TensorReader

from .conftest import OFFICIAL_1K


@pytest.fixture(scope="module")
def official_state() -> dict[str, torch.Tensor]:
    return load_file(OFFICIAL_1K)


@pytest.fixture
def no_tensor_reads(monkeypatch):
    def forbidden(*_args, **_kwargs):
        raise AssertionError("a rejected checkpoint was read or instantiated")

    monkeypatch.setattr(TensorReader, "read", forbidden)
    monkeypatch.setattr(loader, "L2PTransformer", forbidden)


def save(tmp_path: Path, state: dict[str, torch.Tensor], name: str = "model.safetensors") -> Path:
    path = tmp_path / name
    save_file({key: value.contiguous() for key, value in state.items()}, str(path))
    return path


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    b_state = b.state_dict()
    for name, tensor in a.state_dict().items():
        assert torch.equal(tensor, b_state[name]), name


# --- layouts and shards -------------------------------------------------------------


def test_official_layout_is_renamed_to_comfyui_names():
    info = l2p_core.inspect_checkpoint(OFFICIAL_1K)
    assert info.layout.layout == "official"
    assert "x_embedder.weight" in info.layout
    assert info.layout.shape("layers.0.attention.qkv.weight") == (384, 128)
    assert "layers.0.attention.out.weight" in info.layout
    assert "layers.0.attention.q_norm.weight" in info.layout
    assert len(info.layout.tensors) == 102


def test_comfyui_layout_is_recognised_with_prefix(comfyui_1k):
    info = l2p_core.inspect_checkpoint(comfyui_1k)
    assert info.layout.layout == "comfyui (prefix 'model.diffusion_model.')"
    assert info.config == l2p_core.inspect_checkpoint(OFFICIAL_1K).config


def test_model_parameter_names_are_comfyui_names():
    model = l2p_core.load_model(OFFICIAL_1K)
    names = set(dict(model.named_parameters()))
    assert "layers.2.attention.qkv.weight" in names
    assert "noise_refiner.0.adaLN_modulation.0.weight" in names
    assert "local_decoder.bottleneck.0.weight" in names
    assert not any("to_q" in name or "all_x_embedder" in name for name in names)


def test_mixed_storage_dtypes_are_cast_per_tensor():
    stored = {
        entry.name: entry.dtype
        for entry in l2p_core.inspect_checkpoint(OFFICIAL_1K).layout.tensors["layers.1.feed_forward.w1.weight"].parts
    }
    assert stored == {"layers.1.feed_forward.w1.weight": "F32"}
    model = l2p_core.load_model(OFFICIAL_1K, dtype=torch.bfloat16)
    assert {parameter.dtype for parameter in model.parameters()} == {torch.bfloat16}


def test_config_comes_from_shapes_not_file_name(tmp_path):
    path = shutil.copy(OFFICIAL_1K, tmp_path / "l2p_4k_sft.safetensors")
    config = l2p_core.inspect_checkpoint(path).config
    assert (config.patch_size, config.dim, config.n_heads, config.n_layers) == (16, 128, 2, 3)
    assert (config.n_refiner_layers, config.cap_feat_dim, config.ffn_hidden, config.adaln_dim) == (1, 32, 341, 128)
    assert config.axes_dims == (16, 24, 24)
    assert config.decoder.depth == 4


@pytest.mark.parametrize(
    ("with_index", "given"), [(True, "first"), (True, "last"), (True, "index"), (False, "first"), (False, "last")]
)
def test_sharded_sets_load_from_any_member(tmp_path, official_state, with_index, given):
    shards = synthetic.save_sharded(official_state, tmp_path, "diffusion_pytorch_model", 3, index=with_index)
    path = {
        "first": shards[0],
        "last": shards[-1],
        "index": tmp_path / "diffusion_pytorch_model.safetensors.index.json",
    }[given]
    assert_same_weights(l2p_core.load_model(path), l2p_core.load_model(OFFICIAL_1K))


def test_missing_shard_is_named(tmp_path, official_state, no_tensor_reads):
    shards = synthetic.save_sharded(official_state, tmp_path, "model", 3, index=False)
    shards[1].unlink()
    with pytest.raises(l2p_core.CheckpointError, match=r"shard 1 of a 3-file set.*model-00002-of-00003\.safetensors"):
        l2p_core.load_model(shards[0])


def test_index_naming_missing_shard_is_named(tmp_path, official_state, no_tensor_reads):
    shards = synthetic.save_sharded(official_state, tmp_path, "model", 2, index=True)
    shards[0].unlink()
    with pytest.raises(l2p_core.CheckpointError, match=r"lists 2 shard\(s\), but 1 are missing.*model-00001-of-00002"):
        l2p_core.load_model(shards[1])


def test_tensor_in_two_shards_is_rejected(tmp_path, official_state, no_tensor_reads):
    names = sorted(official_state)
    save_file({name: official_state[name] for name in names[:60]}, str(tmp_path / "m-00001-of-00002.safetensors"))
    save_file({name: official_state[name] for name in names[59:]}, str(tmp_path / "m-00002-of-00002.safetensors"))
    with pytest.raises(l2p_core.CheckpointError, match=f"'{names[59]}' appears in both"):
        l2p_core.load_model(tmp_path / "m-00001-of-00002.safetensors")


# --- rejections -----------------------------------------------------------------------


def zimage_backbone(official_state) -> dict[str, torch.Tensor]:
    """The tiny checkpoint's backbone without the L2P-specific parts."""
    return {
        name: tensor
        for name, tensor in official_state.items()
        if not name.startswith(("local_decoder.", "all_x_embedder."))
    }


def test_latent_zimage_checkpoint_is_rejected(tmp_path, official_state, no_tensor_reads):
    state = zimage_backbone(official_state)
    state["all_x_embedder.2-1.weight"] = torch.zeros(128, 64)
    state["all_x_embedder.2-1.bias"] = torch.zeros(128)
    state["all_final_layer.2-1.linear.weight"] = torch.zeros(64, 128)
    with pytest.raises(
        l2p_core.CheckpointError,
        match=r"latent Z-Image checkpoint \(it has a final layer.*Load Diffusion Model.*model-1k-merge",
    ):
        l2p_core.load_model(save(tmp_path, state, "z_image_turbo_bf16.safetensors"))


def test_zeta_chroma_pixel_variant_is_rejected(tmp_path, official_state, no_tensor_reads):
    state = zimage_backbone(official_state)
    state["x_embedder.weight"] = torch.zeros(128, 768)
    state["dec_net.cond_embed.weight"] = torch.zeros(16, 128)
    with pytest.raises(l2p_core.CheckpointError, match=r"DCT decoder head \('dec_net\.\*'.*not L2P"):
        l2p_core.load_model(save(tmp_path, state))


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"double_blocks.0.img_attn.qkv.weight": (8, 4)}, "FLUX-family"),
        (
            {"model.layers.0.self_attn.q_proj.weight": (8, 4), "model.embed_tokens.weight": (16, 4)},
            "text encoder.*models/text_encoders",
        ),
        ({"decoder.conv_in.weight": (4, 4, 3, 3)}, "a VAE"),
        ({"diffusion_model.layers.0.attention.qkv.lora_A.weight": (4, 8)}, "a LoRA"),
        ({"foo.bar": (2,)}, r"none of the Z-Image backbone keys .* First keys in the file: foo\.bar"),
    ],
)
def test_other_architectures_are_named(tmp_path, keys, message, no_tensor_reads):
    path = save(tmp_path, {name: torch.zeros(shape) for name, shape in keys.items()})
    with pytest.raises(l2p_core.CheckpointError, match=message):
        l2p_core.load_model(path)


@pytest.mark.parametrize(
    ("removed", "message"),
    [
        ("local_decoder.dec2.0.weight", r"missing 'local_decoder\.dec2\.0\.weight'.*never run with random weights"),
        (
            "local_decoder.dec2.0.bias",
            r"missing 1 L2P weight\(s\): local_decoder\.dec2\.0\.bias.*never run with random weights",
        ),
    ],
)
def test_missing_decoder_weight_is_named(tmp_path, official_state, removed, message, no_tensor_reads):
    state = dict(official_state)
    del state[removed]
    with pytest.raises(l2p_core.CheckpointError, match=message):
        l2p_core.load_model(save(tmp_path, state))


def test_missing_decoder_level_is_rejected(tmp_path, official_state, no_tensor_reads):
    state = {name: tensor for name, tensor in official_state.items() if not name.startswith("local_decoder.enc4.")}
    with pytest.raises(
        l2p_core.CheckpointError, match="levels enc1, enc2, enc3, enc4, but the file has enc1, enc2, enc3"
    ):
        l2p_core.load_model(save(tmp_path, state))


def test_missing_whole_decoder_is_rejected(tmp_path, official_state, no_tensor_reads):
    state = {name: tensor for name, tensor in official_state.items() if not name.startswith("local_decoder.")}
    with pytest.raises(l2p_core.CheckpointError, match=r"pixel patch embedder but no local decoder weights"):
        l2p_core.load_model(save(tmp_path, state))


def test_misshapen_decoder_weight_is_named(tmp_path, official_state, no_tensor_reads):
    state = dict(official_state)
    state["local_decoder.out_conv.weight"] = torch.zeros(3, 32, 1, 1, dtype=torch.bfloat16)
    with pytest.raises(
        l2p_core.CheckpointError,
        match=r"'local_decoder\.out_conv\.weight' is \[3, 32, 1, 1\], expected \[3, 64, 1, 1\]",
    ):
        l2p_core.load_model(save(tmp_path, state))


def test_unexpected_tensor_is_rejected(tmp_path, official_state, no_tensor_reads):
    state = dict(official_state)
    state["local_decoder.extra.0.weight"] = torch.zeros(3)
    with pytest.raises(
        l2p_core.CheckpointError, match=r"1 tensor\(s\) that L2P does not use: local_decoder\.extra\.0\.weight"
    ):
        l2p_core.load_model(save(tmp_path, state))


def test_mixed_key_layouts_are_rejected(tmp_path, official_state, no_tensor_reads):
    state = dict(official_state)
    state["layers.0.attention.qkv.weight"] = torch.zeros(384, 128, dtype=torch.bfloat16)
    with pytest.raises(l2p_core.CheckpointError, match="stores 'layers.0.attention.qkv.weight' twice"):
        l2p_core.load_model(save(tmp_path, state))


def test_quantised_repack_is_rejected(tmp_path, official_state, no_tensor_reads):
    state = dict(official_state)
    state["layers.0.feed_forward.w1.weight"] = torch.zeros(341, 128, dtype=torch.int8)
    with pytest.raises(l2p_core.CheckpointError, match="as I8: it is a quantised repack"):
        l2p_core.load_model(save(tmp_path, state))


def replace_patch_embedder(state: dict[str, torch.Tensor], patch: int) -> dict[str, torch.Tensor]:
    state = dict(state)
    del state["all_x_embedder.16-1.weight"], state["all_x_embedder.16-1.bias"]
    state[f"all_x_embedder.{patch}-1.weight"] = torch.zeros(128, 3 * patch * patch, dtype=torch.bfloat16)
    state[f"all_x_embedder.{patch}-1.bias"] = torch.zeros(128, dtype=torch.bfloat16)
    return state


def test_unreleased_patch_size_is_rejected(tmp_path, official_state, no_tensor_reads):
    with pytest.raises(l2p_core.UnsupportedCheckpointError, match=r"32-px patches .*16 \(1K\), 64 \(HR 4K\)"):
        l2p_core.load_model(save(tmp_path, replace_patch_embedder(official_state, 32)))


@pytest.mark.parametrize(
    ("patch", "variant", "levels"), [(64, "HR 4K", "enc0, enc0b, enc1"), (160, "HR 10K", "enc_10k_a, enc0")]
)
def test_decoder_of_other_variant_is_rejected(tmp_path, official_state, patch, variant, levels, no_tensor_reads):
    # An HR patch embedder with the 1K decoder: the file mixes two variants.
    message = rf"{variant} variant \(patch size {patch}\).*levels {levels}.*file has enc1, enc2"
    with pytest.raises(l2p_core.CheckpointError, match=message):
        l2p_core.load_model(save(tmp_path, replace_patch_embedder(official_state, patch)))


def test_truncated_file_is_rejected(tmp_path, no_tensor_reads):
    data = OFFICIAL_1K.read_bytes()
    path = tmp_path / "model-1k-merge.safetensors"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(l2p_core.CheckpointError, match=r"is truncated: .* download the file again"):
        l2p_core.load_model(path)


def header_bytes(header: dict, data_size: int) -> bytes:
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + bytes(data_size)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x05\x00", "too short to be a safetensors file"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 19600000000\n", "is a Git LFS pointer"),
        (struct.pack("<Q", 10**12) + b"{}", "corrupt or truncated safetensors header"),
        (struct.pack("<Q", 12) + b"{not json!!}", "invalid JSON"),
        (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
        (header_bytes({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, 8), "needs 16 bytes"),
        (header_bytes({"w": {"dtype": "Q9", "shape": [4], "data_offsets": [0, 4]}}, 4), "unknown dtype 'Q9'"),
        (header_bytes({"w": {"dtype": "F32", "shape": "four"}}, 4), "entry for 'w' is malformed"),
    ],
)
def test_corrupt_headers_are_rejected(tmp_path, content, message, no_tensor_reads):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(content)
    with pytest.raises(l2p_core.CheckpointError, match=message):
        l2p_core.load_model(path)


class Exploit:
    """Unpickling this object creates a marker file; the loader must never do it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".pth", ".bin"])
def test_pickle_files_are_never_unpickled(tmp_path, suffix, no_tensor_reads):
    marker = tmp_path / "unpickled"
    path = tmp_path / f"model{suffix}"
    path.write_bytes(pickle.dumps(Exploit(marker)))
    with pytest.raises(
        l2p_core.CheckpointError, match=rf"pickle checkpoint \('{suffix}'\).*never unpickled.*safetensors"
    ):
        l2p_core.load_model(path)
    assert not marker.exists()


def test_pickle_renamed_to_safetensors_is_rejected(tmp_path, no_tensor_reads):
    marker = tmp_path / "unpickled"
    path = tmp_path / "model.safetensors"
    torch.save({"exploit": Exploit(marker)}, path)
    with pytest.raises(l2p_core.CheckpointError, match="PyTorch pickle file although its name ends in '.safetensors'"):
        l2p_core.load_model(path)
    assert not marker.exists()


def test_missing_path_and_folder_are_rejected(tmp_path, no_tensor_reads):
    with pytest.raises(l2p_core.CheckpointError, match="does not exist"):
        l2p_core.load_model(tmp_path / "nothing.safetensors")
    with pytest.raises(l2p_core.CheckpointError, match="is a folder"):
        l2p_core.load_model(tmp_path)


# --- hostile and damaged files ---------------------------------------------------------------


def test_header_length_with_pickle_byte_loads(tmp_path, official_state):
    # The low byte of the header length is 0x80, the first byte of a pickle stream.
    for padding in range(300):
        path = tmp_path / "padded.safetensors"
        save_file(dict(official_state), str(path), metadata={"pad": "x" * padding})
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    assert l2p_core.inspect_checkpoint(path).config.dim == 128


def rewrite_header(source: Path, target: Path, edit, extra: bytes = b"") -> Path:
    """Copy a safetensors file with its JSON header changed by `edit(header) -> header or bytes`."""
    data = source.read_bytes()
    length = struct.unpack("<Q", data[:8])[0]
    edited = edit(json.loads(data[8 : 8 + length]))
    encoded = edited if isinstance(edited, bytes) else json.dumps(edited).encode()
    target.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data[8 + length :] + extra)
    return target


def first_tensor(header: dict) -> str:
    return sorted(
        (name for name in header if name != "__metadata__"), key=lambda name: header[name]["data_offsets"][0]
    )[0]


def with_overlap(header):
    second = sorted((name for name in header if name != "__metadata__"), key=lambda n: header[n]["data_offsets"][0])[1]
    header[second]["data_offsets"][0] -= 2
    header[second]["data_offsets"][1] -= 2
    return header


def with_float_shape(header):
    header[first_tensor(header)]["shape"] = [float(size) for size in header[first_tensor(header)]["shape"]]
    return header


def with_duplicate_key(header):
    name = first_tensor(header)
    encoded = json.dumps(header)
    entry = json.dumps({name: header[name]})[1:-1]
    return (encoded[:-1] + ", " + entry + "}").encode()


@pytest.mark.parametrize(
    ("edit", "extra", "message"),
    [
        (lambda header: header, bytes(64), "64 bytes after its last tensor"),
        (with_overlap, b"", "overlaps the tensor before it"),
        (with_float_shape, b"", "must be non-negative integers"),
        (with_duplicate_key, b"", "appears twice"),
        (lambda header: header | {"__metadata__": {"format": 3}}, b"", "'__metadata__' is not a map of strings"),
    ],
)
def test_damaged_headers_are_rejected_before_loading(tmp_path, edit, extra, message, no_tensor_reads):
    path = rewrite_header(OFFICIAL_1K, tmp_path / "damaged.safetensors", edit, extra)
    with pytest.raises(l2p_core.CheckpointError, match=message):
        l2p_core.inspect_checkpoint(path)


def test_huge_block_index_is_rejected_quickly(tmp_path, official_state, no_tensor_reads):
    state = dict(official_state)
    state["layers.999999999999.ffn_norm1.weight"] = torch.zeros(128)
    with pytest.raises(l2p_core.CheckpointError, match=r"block 'layers\.999999999999', far beyond any L2P model"):
        l2p_core.load_model(save(tmp_path, state))


def test_missing_blocks_are_listed_briefly(tmp_path, official_state, no_tensor_reads):
    state = {name: tensor for name, tensor in official_state.items() if not name.startswith("layers.1.")}
    state["layers.40.ffn_norm1.weight"] = torch.zeros(128)
    with pytest.raises(l2p_core.CheckpointError, match=r"blocks layers\.1, layers\.3, .* and \d+ more are missing"):
        l2p_core.load_model(save(tmp_path, state))


def test_released_size_with_missing_blocks_is_rejected(monkeypatch, no_tensor_reads):
    # The tiny model plays the released 3840-wide one, which has 30 joint blocks.
    monkeypatch.setitem(l2p_core.config.RELEASED_BLOCK_COUNTS, 128, (4, 1))
    with pytest.raises(l2p_core.CheckpointError, match="has 3 joint and 1 refiner blocks, but released L2P models"):
        l2p_core.inspect_checkpoint(OFFICIAL_1K)


@pytest.mark.parametrize(
    ("replacement", "message"),
    [
        ({"layers.0.attention.norm_q.weight": torch.zeros(0)}, "q_norm width 0 does not divide"),
        ({"cap_embedder.1.weight": torch.tensor(1.0)}, r"'cap_embedder\.1\.weight' has shape \[\], expected"),
    ],
)
def test_degenerate_shapes_are_rejected(tmp_path, official_state, replacement, message, no_tensor_reads):
    with pytest.raises(l2p_core.CheckpointError, match=message):
        l2p_core.load_model(save(tmp_path, dict(official_state) | replacement))


@pytest.mark.parametrize(("name", "message"), [("../outside.safetensors", "not a file name"), (7, "non-string")])
def test_index_pointing_elsewhere_is_rejected(tmp_path, official_state, name, message, no_tensor_reads):
    synthetic.save_sharded(official_state, tmp_path, "model", 2, index=True)
    index = tmp_path / "model.safetensors.index.json"
    content = json.loads(index.read_text())
    content["weight_map"]["x_pad_token"] = name
    index.write_text(json.dumps(content))
    with pytest.raises(l2p_core.CheckpointError, match=message):
        l2p_core.load_model(index)


@pytest.mark.parametrize("prefix", ["transformer.", "_orig_mod.", "module.diffusion_model."])
def test_unknown_prefixes_are_found(tmp_path, official_state, prefix):
    path = save(tmp_path, {prefix + name: tensor for name, tensor in official_state.items()})
    assert l2p_core.inspect_checkpoint(path).layout.prefix == prefix


def test_scaled_fp8_checkpoint_is_rejected(tmp_path, official_state, no_tensor_reads):
    state = dict(official_state)
    state["layers.0.feed_forward.w1.weight"] = official_state["layers.0.feed_forward.w1.weight"].to(torch.float8_e4m3fn)
    state["layers.0.feed_forward.w1.scale_weight"] = torch.ones(1)
    with pytest.raises(l2p_core.CheckpointError, match=r"scaled quantised checkpoint .*scale_weight"):
        l2p_core.load_model(save(tmp_path, state))


def test_impossible_shard_name_is_a_single_file(tmp_path):
    path = shutil.copy(OFFICIAL_1K, tmp_path / "model-00001-of-00000.safetensors")
    assert l2p_core.inspect_checkpoint(path).config.dim == 128


def test_invalid_load_targets_are_rejected():
    with pytest.raises(ValueError, match="floating-point torch dtype"):
        l2p_core.load_model(OFFICIAL_1K, dtype=torch.int8)
    with pytest.raises(ValueError, match="device 'meta' is invalid here because it stores no data"):
        l2p_core.load_model(OFFICIAL_1K, device="meta")


def test_operations_adding_state_are_rejected():
    class LinearWithBuffer(torch.nn.Linear):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.register_buffer("scale", torch.ones(1, device=kwargs.get("device")))

    operations = type(
        "Operations", (), {"Linear": LinearWithBuffer, "Conv2d": torch.nn.Conv2d, "RMSNorm": torch.nn.RMSNorm}
    )
    with pytest.raises(ValueError, match="state that L2P checkpoints do not provide: .*scale"):
        l2p_core.load_model(OFFICIAL_1K, operations=operations)
