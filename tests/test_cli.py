"""The `l2p-generate` command line and the Qwen3 text encoder, on tiny models built at test time.

The tiny Qwen3 (hidden 32, 2 layers, 4 query / 2 key-value heads of width 8) has random
weights in Hugging Face key naming. It is saved once as a single file with the `model.`
prefix and an LM head, as ComfyUI's qwen_3_4b.safetensors is, and once as a sharded
`save_pretrained` folder. The tokenizer is byte-level BPE without merges, with Qwen's
special tokens and a Qwen-style chat template.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from l2p_core import cli, synthetic
from l2p_core import text_encoder as te

transformers = pytest.importorskip("transformers", reason="the text encoder needs the optional 'transformers' package")
tokenizers = pytest.importorskip("tokenizers", reason="the test tokenizer is built with the 'tokenizers' package")

REPO_ROOT = Path(__file__).resolve().parent.parent
HIDDEN = 32
EXPECTED_TEMPLATE = "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
# Qwen3's template in brief: user turns, then the assistant header. The empty think block
# appears only with enable_thinking=False, so a wrong flag changes the encoded text.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)
PROMPT = "a red cat 猫 on a chair"
LONG_PROMPT = "a very long prompt " * 40  # 760 characters, one byte-level token each


def save_tiny_tokenizer(folder: Path) -> Path:
    """Save a byte-level BPE tokenizer (256 byte tokens + 3 specials) with Qwen's chat template."""
    alphabet = sorted(tokenizers.pre_tokenizers.ByteLevel.alphabet())
    backend = tokenizers.Tokenizer(tokenizers.models.BPE(vocab={char: i for i, char in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = tokenizers.decoders.ByteLevel()
    backend.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<|endoftext|>", eos_token="<|im_end|>", chat_template=CHAT_TEMPLATE
    )
    tokenizer.save_pretrained(folder)

    # Load through the class Z-Image-Turbo's tokenizer_config.json names, as users do.
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "Qwen2Tokenizer"
    config_path.write_text(json.dumps(config))
    return folder


def tiny_qwen3() -> torch.nn.Module:
    config = transformers.Qwen3Config(
        vocab_size=300, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.Qwen3ForCausalLM(config).eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    qwen = tiny_qwen3()
    state = {name: tensor.clone().contiguous() for name, tensor in qwen.state_dict().items()}

    # ComfyUI style: one file, `model.` prefix, LM head included, tokenizer beside it.
    comfy = root / "comfy"
    comfy.mkdir()
    save_file(state, str(comfy / "qwen_3_4b.safetensors"))
    save_tiny_tokenizer(comfy)

    unprefixed = root / "unprefixed"
    unprefixed.mkdir()
    save_file({name.removeprefix("model."): t for name, t in state.items() if name != "lm_head.weight"},
              str(unprefixed / "qwen.safetensors"))  # fmt: skip

    # Hugging Face style: text_encoder/ (shards + index + config.json) beside tokenizer/.
    hf = root / "hf"
    qwen.save_pretrained(hf / "text_encoder", max_shard_size="20KB")
    save_tiny_tokenizer(hf / "tokenizer")

    return {
        "root": root,
        "encoder": comfy / "qwen_3_4b.safetensors",
        "tokenizer": comfy,
        "unprefixed": unprefixed / "qwen.safetensors",
        "hf_encoder": hf / "text_encoder",
        "hf_tokenizer": hf / "tokenizer",
        "model": synthetic.write_checkpoint(root / "l2p.safetensors", synthetic.tiny_config(cap_feat_dim=HIDDEN)),
        "wide_model": synthetic.write_checkpoint(root / "l2p-wide.safetensors", synthetic.tiny_config(cap_feat_dim=48)),
    }


def cli_args(files: dict[str, Path], output: Path, **overrides: object) -> list[str]:
    options = {
        "model": files["model"], "text-encoder": files["encoder"], "prompt": PROMPT, "width": 32, "height": 48,
        "seed": 7, "steps": 2,
    } | overrides  # fmt: skip
    args = ["-o", str(output)]
    for name, value in options.items():
        if value is not None:
            args += [f"--{name}", str(value)]
    return args


def reference_features(folder: Path, tokenizer_folder: Path, prompt: str) -> torch.Tensor:
    """Encode `prompt` with plain transformers calls: hidden_states[-2] without the padding rows."""
    model = transformers.Qwen3Model.from_pretrained(str(folder), local_files_only=True).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tokenizer_folder), local_files_only=True)
    batch = tokenizer(
        [EXPECTED_TEMPLATE.format(prompt=prompt)], padding="max_length", max_length=512, truncation=True,
        return_tensors="pt",
    )  # fmt: skip
    with torch.inference_mode():
        hidden = model(**batch, output_hidden_states=True).hidden_states[-2]
    return hidden[0][batch["attention_mask"][0].bool()]


def leftover_files(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.endswith(".tmp"))


# --- end to end -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def generated(files) -> tuple[subprocess.CompletedProcess, Path]:
    output = files["root"] / "end-to-end" / "out.png"
    output.parent.mkdir()
    environment = os.environ | {"PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "l2p_core.cli", *cli_args(files, output)]
    result = subprocess.run(command, capture_output=True, text=True, env=environment, cwd=REPO_ROOT, timeout=120)
    return result, output


def test_cli_exits_zero(generated):
    result, _ = generated
    assert result.returncode == 0, result.stderr


def test_cli_png_size(generated):
    _, output = generated
    with Image.open(output) as image:
        assert image.size == (32, 48)


def test_cli_png_is_rgb(generated):
    _, output = generated
    with Image.open(output) as image:
        assert image.mode == "RGB"


def test_cli_reports_steps(generated):
    result, _ = generated
    assert "Step 2/2" in result.stderr


@pytest.mark.parametrize(
    "field, expected",
    [
        ("prompt", PROMPT), ("negative_prompt", ""), ("seed", 7), ("steps", 2), ("cfg", 2.0), ("shift", 3.0),
        ("width", 32), ("height", 48), ("model", "l2p.safetensors"), ("text_encoder", "qwen_3_4b.safetensors"),
        ("dtype", "float32"), ("batch_index", 0),
    ],
)  # fmt: skip
def test_cli_png_metadata(generated, field, expected):
    _, output = generated
    with Image.open(output) as image:
        settings = json.loads(image.text[cli.SETTINGS_CHUNK])
    assert settings[field] == expected


def test_cli_metadata_names_tool(generated):
    _, output = generated
    with Image.open(output) as image:
        settings = json.loads(image.text[cli.SETTINGS_CHUNK])
    assert settings["tool"].startswith("l2p-generate ")


def test_cli_leaves_no_temporary_file(generated):
    _, output = generated
    assert leftover_files(output.parent) == []


def pixels_of(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def test_same_seed_same_pixels(files, tmp_path):
    first, second = tmp_path / "first.png", tmp_path / "second.png"
    assert cli.main(cli_args(files, first, tokenizer=files["tokenizer"])) == 0
    assert cli.main(cli_args(files, second)) == 0
    assert np.array_equal(pixels_of(first), pixels_of(second))


def test_other_seed_other_pixels(files, tmp_path):
    first, second = tmp_path / "first.png", tmp_path / "second.png"
    assert cli.main(cli_args(files, first)) == 0
    assert cli.main(cli_args(files, second, seed=8)) == 0
    assert not np.array_equal(pixels_of(first), pixels_of(second))


def test_batch_file_names(files, tmp_path):
    assert cli.main(cli_args(files, tmp_path / "out.png", **{"batch-size": 3})) == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out.png", "out_1.png", "out_2.png"]


def test_batch_index_in_metadata(files, tmp_path):
    assert cli.main(cli_args(files, tmp_path / "out.png", **{"batch-size": 2})) == 0
    with Image.open(tmp_path / "out_1.png") as image:
        settings = json.loads(image.text[cli.SETTINGS_CHUNK])
    assert settings["batch_index"] == 1


@pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT, which Windows processes cannot receive")
def test_ctrl_c_stops_cleanly(files, tmp_path):
    output = tmp_path / "out.png"
    environment = os.environ | {"PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "l2p_core.cli", *cli_args(files, output, steps=100_000)]
    process = subprocess.Popen(
        command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=environment, cwd=REPO_ROOT
    )
    deadline = time.monotonic() + 60
    for line in process.stderr:
        if line.startswith("Step ") or time.monotonic() > deadline:
            break
    process.send_signal(signal.SIGINT)
    _, remaining_stderr = process.communicate(timeout=60)

    assert process.returncode == cli.EXIT_INTERRUPTED, remaining_stderr
    assert "interrupted" in remaining_stderr
    assert "Traceback" not in remaining_stderr
    assert not output.exists()
    assert leftover_files(tmp_path) == []


# --- encoding -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoder(files) -> te.TextEncoder:
    return te.load_text_encoder(files["encoder"], cap_feat_dim=HIDDEN)


@pytest.mark.parametrize("prompt", [PROMPT, "", LONG_PROMPT], ids=["short", "empty", "long"])
def test_encoding_matches_transformers(files, encoder, prompt):
    expected = reference_features(files["hf_encoder"], files["hf_tokenizer"], prompt)
    features = encoder.encode(prompt)
    assert features.shape == expected.shape
    assert torch.allclose(features, expected, atol=1e-6)


def test_encoding_row_count(encoder):
    # The chat template adds 3 special tokens and 16 bytes ("user\n", "\n", "assistant\n") to the prompt's bytes.
    assert encoder.encode(PROMPT).shape == (len(PROMPT.encode()) + 19, HIDDEN)


def test_long_prompt_truncated_to_512(encoder):
    assert encoder.encode(LONG_PROMPT).shape == (512, HIDDEN)


def test_encoding_is_second_to_last_layer(encoder):
    captured = {}
    hook = encoder.model.layers[-2].register_forward_hook(lambda module, inputs, output: captured.update(output=output))
    try:
        features = encoder.encode(PROMPT)
    finally:
        hook.remove()
    layer_output = captured["output"][0] if isinstance(captured["output"], tuple) else captured["output"]
    assert torch.equal(features, layer_output[0, : features.shape[0]])


def test_chat_template_text(encoder):
    assert encoder._apply_chat_template(PROMPT) == EXPECTED_TEMPLATE.format(prompt=PROMPT)


def test_sizes_from_single_file(files):
    sizes = te.inspect_text_encoder(files["encoder"]).sizes
    assert sizes == te.Qwen3Sizes(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
        intermediate_size=64, vocab_size=300, attention_bias=False,
    )  # fmt: skip


def test_single_file_uses_no_config(files):
    assert te.inspect_text_encoder(files["encoder"]).config_folder is None


def test_sharded_folder_is_sharded(files):
    assert len(list(files["hf_encoder"].glob("model-*-of-*.safetensors"))) > 1


@pytest.mark.parametrize("form", ["folder", "shard", "index"])
def test_sharded_folder_features(files, encoder, form):
    folder = files["hf_encoder"]
    path = {
        "folder": folder,
        "shard": sorted(folder.glob("model-*-of-*.safetensors"))[-1],
        "index": folder / "model.safetensors.index.json",
    }[form]
    sharded = te.load_text_encoder(path)
    assert torch.equal(sharded.encode(PROMPT), encoder.encode(PROMPT))


def test_unprefixed_keys_features(files, encoder):
    loaded = te.load_text_encoder(files["unprefixed"], tokenizer_dir=files["tokenizer"])
    assert torch.equal(loaded.encode(PROMPT), encoder.encode(PROMPT))


def test_bfloat16_features_dtype(files):
    loaded = te.load_text_encoder(files["encoder"], dtype=torch.bfloat16)
    assert loaded.encode(PROMPT).dtype == torch.bfloat16


# --- tokenizer discovery --------------------------------------------------------------------


def copy_tokenizer(source: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (source / name).exists():
            shutil.copy(source / name, folder / name)
    return folder


def test_tokenizer_next_to_encoder(files):
    assert te.find_tokenizer(files["encoder"]) == files["encoder"].parent


def test_tokenizer_in_subfolder(files, tmp_path):
    encoder_path = tmp_path / "qwen.safetensors"
    encoder_path.touch()
    expected = copy_tokenizer(files["tokenizer"], tmp_path / "tokenizer")
    assert te.find_tokenizer(encoder_path) == expected


def test_tokenizer_in_sibling_folder(files):
    shard = sorted(files["hf_encoder"].glob("model-*-of-*.safetensors"))[0]
    assert te.find_tokenizer(shard) == files["hf_tokenizer"]


def test_tokenizer_for_folder_encoder(files):
    assert te.find_tokenizer(files["hf_encoder"]) == files["hf_tokenizer"]


def test_tokenizer_explicit_folder(files, tmp_path):
    explicit = copy_tokenizer(files["tokenizer"], tmp_path / "elsewhere")
    assert te.find_tokenizer(files["hf_encoder"], explicit) == explicit


def test_explicit_tokenizer_must_exist(files, tmp_path):
    with pytest.raises(te.TokenizerNotFoundError, match="elsewhere"):
        te.find_tokenizer(files["encoder"], tmp_path / "elsewhere")


# --- errors ---------------------------------------------------------------------------------


def run_failing(files, tmp_path, capsys, **overrides) -> tuple[int, str]:
    status = cli.main(cli_args(files, tmp_path / "out.png", **overrides))
    return status, capsys.readouterr().err


@pytest.fixture
def lonely_encoder(files, tmp_path) -> Path:
    """The tiny encoder alone in a folder, with no tokenizer anywhere near it."""
    folder = tmp_path / "lonely" / "encoders"
    folder.mkdir(parents=True)
    return Path(shutil.copy(files["encoder"], folder / "qwen.safetensors"))


def test_missing_tokenizer_exits_2(files, tmp_path, capsys, lonely_encoder):
    status, stderr = run_failing(files, tmp_path, capsys, **{"text-encoder": lonely_encoder})
    assert status == 2
    assert "Tongyi-MAI/Z-Image-Turbo" in stderr
    assert str(lonely_encoder.parent / "tokenizer") in stderr
    assert str(lonely_encoder.parent.parent / "tokenizer") in stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "out.png").exists()


def test_width_mismatch_exits_2(files, tmp_path, capsys):
    status, stderr = run_failing(files, tmp_path, capsys, model=files["wide_model"])
    assert status == 2
    assert "32-wide" in stderr
    assert "48-wide" in stderr
    assert not (tmp_path / "out.png").exists()


def test_text_file_model_exits_2(files, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("these are not weights, just a note about the model\n")
    status, stderr = run_failing(files, tmp_path, capsys, model=notes)
    assert status == 2
    assert "notes.txt" in stderr
    assert "safetensors" in stderr
    assert not (tmp_path / "out.png").exists()


def test_missing_model_exits_2(files, tmp_path, capsys):
    status, stderr = run_failing(files, tmp_path, capsys, model=tmp_path / "absent.safetensors")
    assert status == 2
    assert "does not exist" in stderr


def test_missing_encoder_exits_2(files, tmp_path, capsys):
    status, stderr = run_failing(files, tmp_path, capsys, **{"text-encoder": tmp_path / "absent.safetensors"})
    assert status == 2
    assert "absent.safetensors" in stderr


def test_l2p_file_as_encoder_exits_2(files, tmp_path, capsys):
    status, stderr = run_failing(files, tmp_path, capsys, **{"text-encoder": files["model"]})
    assert status == 2
    assert "not a Qwen3 text encoder" in stderr


@pytest.mark.parametrize("option, size", [("width", 40), ("height", 50)])
def test_size_not_multiple_of_16(files, tmp_path, capsys, option, size):
    status, stderr = run_failing(files, tmp_path, capsys, **{option: size})
    assert status == 2
    assert f"--{option} {size} is not a multiple of 16 px" in stderr
    assert not (tmp_path / "out.png").exists()


def test_output_must_be_png(files, tmp_path, capsys):
    status = cli.main(cli_args(files, tmp_path / "out.jpg"))
    assert status == 2
    assert "must end in .png" in capsys.readouterr().err


def test_missing_output_folder(files, tmp_path, capsys):
    status = cli.main(cli_args(files, tmp_path / "absent" / "out.png"))
    assert status == 2
    assert "does not exist" in capsys.readouterr().err


def test_missing_transformers_exits_2(files, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    status, stderr = run_failing(files, tmp_path, capsys)
    assert status == 2
    assert 'pip install "comfyui-l2p[cli]"' in stderr


def test_negative_steps_rejected(files, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(cli_args(files, tmp_path / "out.png", steps=-1))
    assert exit_info.value.code == 2
    assert "-1 is not a positive integer" in capsys.readouterr().err


def test_failed_write_keeps_old_file(tmp_path, monkeypatch):
    output = tmp_path / "out.png"
    output.write_bytes(b"previous image")

    def fail_midway(image, handle, *args, **kwargs):
        handle.write(b"\x89PNG partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        cli.write_png_atomically(output, np.zeros((16, 16, 3), np.uint8), {"key": "value"})
    assert output.read_bytes() == b"previous image"
    assert leftover_files(tmp_path) == []


@pytest.mark.parametrize(("patch", "steps", "cfg"), [(16, 30, 2.0), (64, 50, 4.0)])
def test_cli_defaults_to_variant_preset(files, tmp_path, patch, steps, cfg):
    model = synthetic.write_checkpoint(
        tmp_path / f"l2p-{patch}.safetensors", synthetic.tiny_config(patch_size=patch, cap_feat_dim=HIDDEN)
    )
    output = tmp_path / "preset.png"
    assert cli.main(cli_args(files, output, model=model, width=64, height=64, steps=None)) == 0
    with Image.open(output) as image:
        settings = json.loads(image.text[cli.SETTINGS_CHUNK])
    assert (settings["steps"], settings["cfg"]) == (steps, cfg)
