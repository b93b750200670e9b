"""Checkpoint loading: tiny files written in each real layout, loaded strictly and compared."""

import dataclasses
import os

import pytest
import torch

from headforcing.io.checkpoints import load_transformer
from headforcing.io.keymap import diffusers_to_wan
from headforcing.model import DenseAttention, WanModel

from .conftest import random_model
from .test_diffusers_parity import diffusers_twin

FRAMES, HEIGHT, WIDTH = 3, 4, 6  # latent grid -> 2 x 3 tokens per frame


def with_prefix(state_dict, prefix="model."):
    return {f"{prefix}{name}": tensor.clone() for name, tensor in state_dict.items()}


def flow(model: WanModel, timesteps=None) -> torch.Tensor:
    """The model's flow on one fixed clip, full attention over its three frames."""
    config = model.config
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(1, config.in_channels, FRAMES, HEIGHT, WIDTH, generator=generator)
    text = torch.randn(1, config.text_len, config.text_dim, generator=generator)
    if timesteps is None:
        timesteps = torch.tensor([[1000.0, 625.0, 250.0]])
    attention = DenseAttention(model.rope, torch.arange(FRAMES), HEIGHT // 2, WIDTH // 2)
    with torch.no_grad():
        return model(latents, timesteps, model.encode_text(text), attention)


def assert_same_model(loaded: WanModel, source: WanModel) -> None:
    expected = source.state_dict()
    actual = loaded.state_dict()
    assert actual.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(actual[name], tensor), name
    assert torch.equal(flow(loaded), flow(source))


# ---------------------------------------------------------------------------------------------
# round trips


def test_self_forcing_takes_ema_by_default_and_generator_on_request(tmp_path, small_config):
    generator, ema = random_model(small_config, seed=0), random_model(small_config, seed=1)
    path = tmp_path / "self_forcing_dmd.pt"
    torch.save(
        {
            "generator": with_prefix(generator.state_dict()),
            "generator_ema": with_prefix(ema.state_dict()),
            "critic": with_prefix(random_model(small_config, seed=2).state_dict()),
            "step": 600,
        },
        path,
    )
    assert not torch.equal(flow(generator), flow(ema))

    assert_same_model(load_transformer(path, small_config, dtype=torch.float32), ema)
    plain = load_transformer(path, small_config, use_ema=False, dtype=torch.float32)
    assert_same_model(plain, generator)


def fsdp_name(name: str) -> str:
    # FSDP with use_orig_params: a prefix for the root wrap, a segment inside each wrapped block
    if name.startswith("blocks."):
        _, index, rest = name.split(".", 2)
        name = f"blocks.{index}._fsdp_wrapped_module.{rest}"
    return f"_fsdp_wrapped_module.model.{name}"


def test_self_forcing_fsdp_names_and_no_ema(tmp_path, small_config):
    source = random_model(small_config)
    path = tmp_path / "fsdp.pt"
    state_dict = {fsdp_name(name): tensor for name, tensor in source.state_dict().items()}
    torch.save({"generator": state_dict, "critic": {}}, path)
    # use_ema=True (default) falls back to 'generator' when the file has no EMA
    assert_same_model(load_transformer(path, small_config, dtype=torch.float32), source)


@pytest.mark.parametrize("layout", ["training dict", "bare", "bare legacy format"])
def test_causvid(tmp_path, small_config, layout):
    source = random_model(small_config)
    weights = with_prefix(source.state_dict())
    path = tmp_path / "model.pt"
    if layout == "training dict":
        torch.save({"generator": weights, "critic": with_prefix(weights, "x.")}, path)
    else:
        legacy = layout == "bare legacy format"
        torch.save(weights, path, _use_new_zipfile_serialization=not legacy)
    loaded = load_transformer(path, small_config, kind="causvid", dtype=torch.float32)
    assert_same_model(loaded, source)


def diffusers_reference(config):
    """diffusers' own Wan transformer of the same tiny shape, with random weights."""
    reference = diffusers_twin(config)
    with torch.no_grad():
        for param in reference.parameters():
            param.copy_(torch.randn_like(param) / max(param.shape[-1], 1) ** 0.5)
    return reference.eval()


@pytest.mark.parametrize("sharded", [False, True])
def test_diffusers_folder_matches_diffusers(tmp_path, small_config, sharded):
    reference = diffusers_reference(small_config)
    folder = tmp_path / "transformer"
    reference.save_pretrained(folder, max_shard_size="40KB" if sharded else "10GB")
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    assert index.is_file() == sharded

    # the repo root above transformer/ loads too
    loaded = load_transformer(tmp_path, small_config, kind="diffusers", dtype=torch.float32)

    for name, tensor in diffusers_to_wan(reference.state_dict()).items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    timesteps = torch.full((1, FRAMES), 625.0)
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(1, small_config.in_channels, FRAMES, HEIGHT, WIDTH, generator=generator)
    text = torch.randn(1, small_config.text_len, small_config.text_dim, generator=generator)
    with torch.no_grad():
        expected = reference(latents, timesteps[:, 0], text, return_dict=False)[0]
    actual = flow(loaded, timesteps)
    error = (actual - expected).abs().max() / expected.abs().max()
    assert error <= 1e-4, f"max relative error {error:.2e}"


# ---------------------------------------------------------------------------------------------
# LongLive: base + PEFT LoRA


def lora_targets(config):
    """Every nn.Linear inside the attention blocks, as LongLive's configure_lora_for_model."""
    linears = [f"{attn}.{proj}" for attn in ("self_attn", "cross_attn") for proj in "qkvo"]
    linears += ["ffn.0", "ffn.2"]
    return [f"blocks.{index}.{linear}" for index in range(config.num_layers) for linear in linears]


@pytest.mark.parametrize("layout", ["generator_lora", "bare with adapter name"])
def test_longlive_merges_lora(tmp_path, small_config, layout):
    base = random_model(small_config)
    weights = base.state_dict()
    rank, alpha = 4, 8.0
    factors = {}
    for layer in lora_targets(small_config):
        out_features, in_features = weights[f"{layer}.weight"].shape
        factors[layer] = (torch.randn(rank, in_features), torch.randn(out_features, rank) * 0.1)
    adapter = "" if layout == "generator_lora" else ".default"
    peft_state = {}
    for layer, (down, up) in factors.items():
        peft_state[f"base_model.model.{layer}.lora_A{adapter}.weight"] = down
        peft_state[f"base_model.model.{layer}.lora_B{adapter}.weight"] = up
    lora_path = tmp_path / "lora.pt"
    if layout == "generator_lora":
        torch.save({"generator_lora": peft_state, "critic_lora": {}, "step": 3000}, lora_path)
    else:
        torch.save(peft_state, lora_path)
    base_path = tmp_path / "longlive_base.pt"
    torch.save({"generator": with_prefix(weights), "critic": {}, "step": 3000}, base_path)

    merged = load_transformer(
        base_path,
        small_config,
        kind="longlive",
        lora=lora_path,
        lora_alpha=alpha,
        dtype=torch.float32,
    ).state_dict()

    targeted = {f"{layer}.weight" for layer in factors}
    for layer, (down, up) in factors.items():
        expected = weights[f"{layer}.weight"] + (alpha / rank) * (up @ down)
        assert torch.equal(merged[f"{layer}.weight"], expected), layer
        assert not torch.equal(merged[f"{layer}.weight"], weights[f"{layer}.weight"]), layer
    for name, tensor in weights.items():
        if name not in targeted:
            assert torch.equal(merged[name], tensor), name


def test_longlive_needs_lora_and_alpha(tmp_path, small_config):
    base_path = tmp_path / "longlive_base.pt"
    torch.save({"generator": with_prefix(random_model(small_config).state_dict())}, base_path)
    lora_path = tmp_path / "lora.pt"
    torch.save({"generator_lora": {}}, lora_path)
    with pytest.raises(ValueError, match="lora_alpha"):
        load_transformer(base_path, small_config, kind="longlive", lora=lora_path)
    with pytest.raises(ValueError, match="lora="):
        load_transformer(base_path, small_config, kind="longlive", lora_alpha=256)
    with pytest.raises(ValueError, match="kind='longlive' only"):
        load_transformer(base_path, small_config, lora=lora_path, lora_alpha=256)
    with pytest.raises(ValueError, match="'self-forcing', 'causal-forcing', 'causvid', 'longlive'"):
        load_transformer(base_path, small_config, kind="wan")


# ---------------------------------------------------------------------------------------------
# errors


def test_missing_and_unexpected_keys_are_listed(tmp_path, small_config):
    weights = with_prefix(random_model(small_config).state_dict())
    del weights["model.head.head.bias"]
    weights["model.blocks.0.extra.weight"] = torch.zeros(3)
    path = tmp_path / "broken.pt"
    torch.save({"generator": weights}, path)
    with pytest.raises(ValueError) as caught:
        load_transformer(path, small_config)
    message = str(caught.value)
    assert "1 missing (head.head.bias)" in message
    assert "1 unexpected (blocks.0.extra.weight)" in message
    assert str(path) in message and "kind='self-forcing'" in message


def test_diffusers_names_in_a_pickle_get_a_hint(tmp_path, small_config):
    weights = with_prefix(random_model(small_config).state_dict())
    for suffix in ("weight", "bias"):
        weights[f"model.condition_embedder.time_proj.{suffix}"] = weights.pop(
            f"model.time_projection.1.{suffix}"
        )
    path = tmp_path / "renamed.pt"
    torch.save({"generator": weights}, path)
    with pytest.raises(ValueError, match="use kind='diffusers'"):
        load_transformer(path, small_config)
    with pytest.raises(ValueError, match=r"is a folder.*kind='diffusers'"):
        load_transformer(tmp_path, small_config)


@pytest.mark.parametrize(
    ("change", "expected_text"),
    [
        ({"ffn_dim": 128}, "blocks.0.ffn.0.weight: expected (96, 64), found (128, 64)"),
        ({"dim": 96, "num_layers": 3}, "looks like dim=96, ffn_dim=96, text_dim=24, freq_dim=32"),
    ],
)
def test_another_model_size_is_named(tmp_path, small_config, change, expected_text):
    """A checkpoint of another size (say 14B loaded as 1.3B) says what it is and what differs."""
    checkpoint_config = dataclasses.replace(small_config, **change)
    path = tmp_path / "other_size.pt"
    torch.save(with_prefix(random_model(checkpoint_config).state_dict()), path)
    with pytest.raises(ValueError) as caught:
        load_transformer(path, small_config, kind="causvid")
    message = str(caught.value)
    assert expected_text in message
    assert "another model size" in message
    if "dim" in change:
        assert "num_layers=3" in message and "patch_embedding.weight: expected (64," in message


def test_missing_generator_lists_top_level_keys(tmp_path, small_config):
    path = tmp_path / "critic_only.pt"
    weights = with_prefix(random_model(small_config).state_dict())
    torch.save({"critic": weights, "step": 5}, path)
    with pytest.raises(ValueError, match=r"top-level keys: 'critic', 'step'"):
        load_transformer(path, small_config)
    torch.save({"generator_ema": weights}, path)
    with pytest.raises(ValueError, match="use_ema=True loads its 'generator_ema'"):
        load_transformer(path, small_config, use_ema=False)


class CreatesDirectoryWhenUnpickled:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.parametrize("kind", ["self-forcing", "causvid", "longlive"])
def test_code_running_pickle_is_refused(tmp_path, small_config, kind):
    # the payload is live: an unrestricted unpickling runs it
    control_marker = tmp_path / "control_marker"
    control = tmp_path / "control.pt"
    torch.save({"generator": CreatesDirectoryWhenUnpickled(control_marker)}, control)
    torch.load(control, weights_only=False)
    assert control_marker.exists()

    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pt"
    torch.save({"generator": CreatesDirectoryWhenUnpickled(marker)}, evil)
    base = tmp_path / "base.pt"
    torch.save({"generator": with_prefix(random_model(small_config).state_dict())}, base)
    if kind == "longlive":
        arguments = {"path": base, "kind": kind, "lora": evil, "lora_alpha": 8.0}
    else:
        arguments = {"path": evil, "kind": kind}
    with pytest.raises(ValueError, match=r"not a plain weights file.*never unpickle"):
        load_transformer(config=small_config, **arguments)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# dtype and materialization


def test_bfloat16_load_keeps_float32_islands(tmp_path, small_config):
    source = random_model(small_config)
    path = tmp_path / "model.pt"
    torch.save({"generator": with_prefix(source.state_dict())}, path)
    model = load_transformer(path, small_config)
    parameters = dict(model.named_parameters())
    assert parameters["blocks.0.modulation"].dtype == torch.float32
    assert parameters["blocks.0.self_attn.q.weight"].dtype == torch.bfloat16
    assert parameters["blocks.0.norm3.weight"].dtype == torch.float32
    assert parameters["time_embedding.0.weight"].dtype == torch.float32
    assert parameters["head.modulation"].dtype == torch.float32
    assert parameters["patch_embedding.weight"].dtype == torch.bfloat16
    assert not any(tensor.is_meta for tensor in model.state_dict().values())
    assert model.rope.temporal_angles(torch.arange(3)).device.type == "cpu"
    out = flow(model)
    reference = flow(source)
    error = (out - reference).abs().max() / reference.abs().max()
    assert error < 0.1, f"bf16 flow is off by {error:.2e}"
