"""The Wan VAE streaming decoder against diffusers' one-shot decode, and its two weight formats."""

import copy
import itertools
import pickle

import pytest
import torch

from headforcing.io.decoders import to_uint8_frames
from headforcing.io.wan_vae import (
    WanVAEConfig,
    WanVAEDecoder,
    convert_wan_vae_state_dict,
    load_wan_vae,
)

diffusers = pytest.importorskip("diffusers")

TINY = WanVAEConfig(base_dim=8, num_res_blocks=1)
# Two residual blocks per stage, as in the released VAE, so that Wan's flat indices are real ones.
TINY_WAN_LAYOUT = WanVAEConfig(base_dim=4, num_res_blocks=2)


def tiny_vae(config: WanVAEConfig, seed: int = 0):
    """A diffusers AutoencoderKLWan with non-trivial norms and biases."""
    torch.manual_seed(seed)
    vae = diffusers.AutoencoderKLWan(**config.diffusers_kwargs()).eval()
    with torch.no_grad():
        for name, param in vae.named_parameters():
            if name.endswith("gamma"):
                param.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                param.normal_(0.0, 0.05)
    return vae


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Convolutions this small lose more to thread hand-offs than they gain (3-4x on 2 cores).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def vae():
    return tiny_vae(TINY)


@pytest.fixture(scope="module")
def latents():
    # normalised latents of 9 latent frames: [B, C, F, h, w]
    return torch.randn(1, 16, 9, 4, 4, generator=torch.Generator().manual_seed(1))


def one_shot(vae, latents):
    """diffusers' own decode of the whole latent video, same de-normalisation."""
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    with torch.inference_mode():
        return vae.decode(latents * std + mean).sample


@pytest.fixture(scope="module")
def reference(vae, latents):
    return one_shot(vae, latents)


# --- streaming decode ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("chunk_frames", "channels_last", "frames_per_call"),
    [
        ((3, 3, 3), False, None),
        ((3, 3, 3), True, None),
        ((1, 5, 3), False, None),
        ((3, 3, 3), False, 1),  # the bounded-memory decode of the 16gb mode
    ],
)
def test_streaming_equals_one_shot(
    vae, latents, reference, chunk_frames, channels_last, frames_per_call
):
    decoder = WanVAEDecoder(
        copy.deepcopy(vae), channels_last=channels_last, frames_per_call=frames_per_call
    )
    pieces = []
    start = 0
    for frames in chunk_frames:
        pieces.append(decoder.decode_chunk_float(latents[:, :, start : start + frames]))
        start += frames
    expected_counts = [1 + 4 * (chunk_frames[0] - 1)] + [4 * f for f in chunk_frames[1:]]
    assert [piece.shape[2] for piece in pieces] == expected_counts
    streamed = torch.cat(pieces, dim=2)
    assert streamed.shape == reference.shape == (1, 3, 33, 32, 32)
    assert (streamed - reference).abs().max().item() <= 1e-4
    # the video is not trivially saturated, so the comparison means something
    assert reference.std() > 0.05 and (reference.abs() < 1).float().mean() > 0.9


def test_decode_chunk_gives_uint8_frames(vae, latents, reference):
    decoder = WanVAEDecoder(vae)
    frames = [decoder.decode_chunk(latents[:, :, start : start + 3]) for start in (0, 3, 6)]
    assert [f.shape for f in frames] == [(1, 9, 32, 32, 3), (1, 12, 32, 32, 3), (1, 12, 32, 32, 3)]
    assert all(f.dtype == torch.uint8 and f.device.type == "cpu" for f in frames)
    expected = to_uint8_frames(reference)
    difference = (torch.cat(frames, dim=1).int() - expected.int()).abs()
    assert difference.max() <= 1  # a float ulp may round a pixel the other way


def test_reset_starts_a_new_video(vae, latents):
    decoder = WanVAEDecoder(vae)
    first = decoder.decode_chunk_float(latents[:, :, :3]).clone()
    decoder.decode_chunk_float(latents[:, :, 3:6])
    continued = decoder.decode_chunk_float(latents[:, :, :3])
    assert continued.shape[2] == 12  # without reset the cache carries on
    decoder.reset()
    again = decoder.decode_chunk_float(latents[:, :, :3])
    assert again.shape[2] == 9
    torch.testing.assert_close(again, first, rtol=0, atol=0)


def test_bad_latent_shape_is_refused(vae):
    with pytest.raises(ValueError, match=r"\[B, 16, F, h, w\]"):
        WanVAEDecoder(vae).decode_chunk(torch.zeros(1, 8, 3, 4, 4))


# --- diffusers folder ------------------------------------------------------------------------


def test_diffusers_folder_round_trip(vae, latents, reference, tmp_path):
    vae.save_pretrained(tmp_path / "vae")
    decoder = WanVAEDecoder.from_diffusers(tmp_path / "vae", device="cpu", dtype=torch.float32)
    loaded = dict(decoder.decoder.state_dict())
    for key, tensor in vae.decoder.state_dict().items():
        torch.testing.assert_close(loaded[key], tensor, rtol=0, atol=0)
    streamed = torch.cat(
        [decoder.decode_chunk_float(latents[:, :, s : s + 3]) for s in (0, 3, 6)], dim=2
    )
    assert (streamed - reference).abs().max().item() <= 1e-4


def test_diffusers_folder_with_wrong_keys_is_refused(vae, tmp_path):
    from safetensors.torch import load_file, save_file

    vae.save_pretrained(tmp_path / "vae")
    weights = tmp_path / "vae" / "diffusion_pytorch_model.safetensors"
    state_dict = load_file(weights)
    del state_dict["decoder.norm_out.gamma"]
    state_dict["decoder.not_a_layer.weight"] = torch.zeros(2)
    save_file(state_dict, weights)
    with pytest.raises(ValueError, match=r"decoder\.norm_out\.gamma") as error:
        WanVAEDecoder.from_diffusers(tmp_path / "vae")
    assert "decoder.not_a_layer.weight" in str(error.value)


# --- original Wan format ---------------------------------------------------------------------


def wan_original_shapes(config: WanVAEConfig) -> dict[str, tuple[int, ...]]:
    """Every key of Wan's ``WanVAE_`` (wan/modules/vae.py) with its shape, built the way it is.

    Written from Wan's module structure, not from our converter: a ResidualBlock is
    ``residual = Sequential(RMS_norm, SiLU, CausalConv3d, RMS_norm, SiLU, Dropout, CausalConv3d)``
    plus ``shortcut`` when channels change; a Resample is ``resample = Sequential(pad or
    upsample, Conv2d)`` plus ``time_conv`` in the 3d modes; the encoder and decoder keep their
    stages in the flat Sequentials ``downsamples`` / ``upsamples``.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    dim, z_dim, dim_mult = config.base_dim, config.z_dim, list(config.dim_mult)

    def conv(name, c_in, c_out, *kernel):
        shapes[f"{name}.weight"] = (c_out, c_in, *kernel)
        shapes[f"{name}.bias"] = (c_out,)

    def rms_norm(name, channels, images=False):
        shapes[f"{name}.gamma"] = (channels, 1, 1) if images else (channels, 1, 1, 1)

    def residual_block(name, c_in, c_out):
        rms_norm(f"{name}.residual.0", c_in)
        conv(f"{name}.residual.2", c_in, c_out, 3, 3, 3)
        rms_norm(f"{name}.residual.3", c_out)
        conv(f"{name}.residual.6", c_out, c_out, 3, 3, 3)
        if c_in != c_out:
            conv(f"{name}.shortcut", c_in, c_out, 1, 1, 1)

    def attention_block(name, channels):
        rms_norm(f"{name}.norm", channels, images=True)
        conv(f"{name}.to_qkv", channels, 3 * channels, 1, 1)
        conv(f"{name}.proj", channels, channels, 1, 1)

    def middle(name, channels):
        residual_block(f"{name}.0", channels, channels)
        attention_block(f"{name}.1", channels)
        residual_block(f"{name}.2", channels, channels)

    # encoder (to 2 * z_dim: mean and log-variance)
    dims = [dim * u for u in [1, *dim_mult]]
    conv("encoder.conv1", 3, dims[0], 3, 3, 3)
    index = 0
    for stage, (c_in, c_out) in enumerate(itertools.pairwise(dims)):
        for _ in range(config.num_res_blocks):
            residual_block(f"encoder.downsamples.{index}", c_in, c_out)
            index, c_in = index + 1, c_out
        if stage != len(dim_mult) - 1:
            conv(f"encoder.downsamples.{index}.resample.1", c_out, c_out, 3, 3)
            if config.temperal_downsample[stage]:
                conv(f"encoder.downsamples.{index}.time_conv", c_out, c_out, 3, 1, 1)
            index += 1
    middle("encoder.middle", dims[-1])
    rms_norm("encoder.head.0", dims[-1])
    conv("encoder.head.2", dims[-1], 2 * z_dim, 3, 3, 3)
    conv("conv1", 2 * z_dim, 2 * z_dim, 1, 1, 1)
    conv("conv2", z_dim, z_dim, 1, 1, 1)

    # decoder; Wan halves the input channels of stages 1, 2, 3 (the upsampler halved them)
    dims = [dim * u for u in [dim_mult[-1], *dim_mult[::-1]]]
    temperal_upsample = list(config.temperal_downsample)[::-1]
    conv("decoder.conv1", z_dim, dims[0], 3, 3, 3)
    middle("decoder.middle", dims[0])
    index = 0
    for stage, (c_in, c_out) in enumerate(itertools.pairwise(dims)):
        if stage in (1, 2, 3):
            c_in //= 2
        for _ in range(config.num_res_blocks + 1):
            residual_block(f"decoder.upsamples.{index}", c_in, c_out)
            index, c_in = index + 1, c_out
        if stage != len(dim_mult) - 1:
            conv(f"decoder.upsamples.{index}.resample.1", c_out, c_out // 2, 3, 3)
            if temperal_upsample[stage]:
                conv(f"decoder.upsamples.{index}.time_conv", c_out, 2 * c_out, 3, 1, 1)
            index += 1
    rms_norm("decoder.head.0", dims[-1])
    conv("decoder.head.2", dims[-1], 3, 3, 3, 3)
    return shapes


# Read off Wan2.1's wan/modules/vae.py for the released VAE (dim 96, z_dim 16, dim_mult
# [1, 2, 4, 4], 2 residual blocks, temporal downsampling [False, True, True]).
REAL_WAN21_KEYS = {
    "encoder.conv1.weight": (96, 3, 3, 3, 3),
    "encoder.downsamples.2.resample.1.weight": (96, 96, 3, 3),
    "encoder.downsamples.3.shortcut.weight": (192, 96, 1, 1, 1),
    "encoder.downsamples.5.time_conv.weight": (192, 192, 3, 1, 1),
    "encoder.head.2.weight": (32, 384, 3, 3, 3),
    "conv1.weight": (32, 32, 1, 1, 1),
    "conv2.weight": (16, 16, 1, 1, 1),
    "decoder.conv1.weight": (384, 16, 3, 3, 3),
    "decoder.middle.0.residual.0.gamma": (384, 1, 1, 1),
    "decoder.middle.1.norm.gamma": (384, 1, 1),
    "decoder.middle.1.to_qkv.weight": (1152, 384, 1, 1),
    "decoder.upsamples.3.time_conv.weight": (768, 384, 3, 1, 1),
    "decoder.upsamples.3.resample.1.weight": (192, 384, 3, 3),
    "decoder.upsamples.4.shortcut.weight": (384, 192, 1, 1, 1),
    "decoder.upsamples.7.time_conv.weight": (768, 384, 3, 1, 1),
    "decoder.upsamples.11.resample.1.weight": (96, 192, 3, 3),
    "decoder.upsamples.14.residual.6.weight": (96, 96, 3, 3, 3),
    "decoder.head.0.gamma": (96, 1, 1, 1),
    "decoder.head.2.weight": (3, 96, 3, 3, 3),
}


def test_generator_has_the_real_wan21_keys():
    shapes = wan_original_shapes(WanVAEConfig())
    for key, shape in REAL_WAN21_KEYS.items():
        assert shapes.get(key) == shape, key
    assert "decoder.upsamples.15.resample.1.weight" not in shapes  # last stage: no upsampler


def test_converter_covers_the_real_wan21_vae():
    """At full size, on the meta device: the converted keys are diffusers' keys, same shapes."""
    config = WanVAEConfig()
    original = {
        key: torch.empty(shape, device="meta") for key, shape in wan_original_shapes(config).items()
    }
    converted = convert_wan_vae_state_dict(original, config)
    with torch.device("meta"):
        target = diffusers.AutoencoderKLWan().state_dict()
    assert sorted(converted) == sorted(target)
    assert all(converted[key].shape == target[key].shape for key in target)


def random_wan_file(config: WanVAEConfig, path):
    generator = torch.Generator().manual_seed(2)
    state_dict = {
        key: torch.randn(shape, generator=generator)
        for key, shape in wan_original_shapes(config).items()
    }
    torch.save(state_dict, path)
    return state_dict


def test_wan_file_loads_weights_where_they_belong(tmp_path):
    original = random_wan_file(TINY_WAN_LAYOUT, tmp_path / "Wan2.1_VAE.pth")
    vae = load_wan_vae(tmp_path / "Wan2.1_VAE.pth", TINY_WAN_LAYOUT)
    encoder, decoder = vae.encoder, vae.decoder
    landing = {
        "decoder.head.2.weight": decoder.conv_out.weight,
        "decoder.head.0.gamma": decoder.norm_out.gamma,
        "decoder.conv1.bias": decoder.conv_in.bias,
        "decoder.middle.1.norm.gamma": decoder.mid_block.attentions[0].norm.gamma,
        "decoder.middle.2.residual.3.gamma": decoder.mid_block.resnets[1].norm2.gamma,
        "decoder.upsamples.3.time_conv.weight": decoder.up_blocks[0].upsamplers[0].time_conv.weight,
        "decoder.upsamples.4.residual.0.gamma": decoder.up_blocks[1].resnets[0].norm1.gamma,
        "decoder.upsamples.4.shortcut.weight": decoder.up_blocks[1].resnets[0].conv_shortcut.weight,
        "decoder.upsamples.11.resample.1.weight": decoder.up_blocks[2]
        .upsamplers[0]
        .resample[1]
        .weight,
        "decoder.upsamples.14.residual.6.weight": decoder.up_blocks[3].resnets[2].conv2.weight,
        "encoder.downsamples.5.time_conv.weight": encoder.down_blocks[5].time_conv.weight,
        "encoder.middle.0.residual.0.gamma": encoder.mid_block.resnets[0].norm1.gamma,
        "conv1.weight": vae.quant_conv.weight,
        "conv2.bias": vae.post_quant_conv.bias,
    }
    for key, parameter in landing.items():
        torch.testing.assert_close(parameter, original[key], rtol=0, atol=0, msg=key)


def test_wan_file_matches_diffusers_own_converter(tmp_path):
    """diffusers' single-file converter (written for this exact layout) is a second opinion."""
    single_file = pytest.importorskip("diffusers.loaders.single_file_utils")
    original = random_wan_file(TINY_WAN_LAYOUT, tmp_path / "vae.pth")
    ours = load_wan_vae(tmp_path / "vae.pth", TINY_WAN_LAYOUT).state_dict()
    theirs = single_file.convert_wan_vae_to_diffusers(original)
    assert sorted(ours) == sorted(theirs)
    for key, tensor in theirs.items():
        torch.testing.assert_close(ours[key], tensor, rtol=0, atol=0, msg=key)


def test_wan_file_decodes_through_the_streaming_decoder(tmp_path):
    random_wan_file(TINY_WAN_LAYOUT, tmp_path / "vae.pth")
    decoder = WanVAEDecoder.from_wan_file(tmp_path / "vae.pth", config=TINY_WAN_LAYOUT)
    frames = decoder.decode_chunk(torch.randn(1, 16, 3, 2, 2))
    assert frames.shape == (1, 9, 16, 16, 3) and frames.dtype == torch.uint8


def test_wan_file_with_missing_and_extra_keys_is_refused(tmp_path):
    original = random_wan_file(TINY_WAN_LAYOUT, tmp_path / "vae.pth")
    del original["decoder.head.0.gamma"]
    original["decoder.upsamples.99.residual.0.gamma"] = torch.ones(4, 1, 1, 1)
    torch.save(original, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match="1 missing") as error:
        load_wan_vae(tmp_path / "broken.pth", TINY_WAN_LAYOUT)
    message = str(error.value)
    assert "decoder.norm_out.gamma" in message
    assert "1 unexpected" in message and "decoder.upsamples.99.residual.0.gamma" in message
    assert "Wan2.1_VAE.pth" in message  # names the format it expected


def test_wan_file_for_another_config_is_refused(tmp_path):
    random_wan_file(TINY_WAN_LAYOUT, tmp_path / "vae.pth")
    wider = WanVAEConfig(base_dim=8, num_res_blocks=2)
    with pytest.raises(ValueError, match="wrong shape"):
        WanVAEDecoder.from_wan_file(tmp_path / "vae.pth", config=wider)


class _Payload:
    """Unpickling this creates a file: stands in for arbitrary code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("container", ["torch_zip", "legacy_pickle"])
def test_malicious_pickle_is_refused(tmp_path, container):
    marker = tmp_path / "pwned"
    path = tmp_path / "Wan2.1_VAE.pth"
    payload = {"decoder.head.2.weight": torch.zeros(1), "evil": _Payload(marker)}
    if container == "torch_zip":
        torch.save(payload, path)
    else:
        with open(path, "wb") as file:
            pickle.dump(payload, file, protocol=2)
    with pytest.raises(ValueError, match="not a plain weights file"):
        WanVAEDecoder.from_wan_file(path, config=TINY_WAN_LAYOUT)
    assert not marker.exists()
    # The payload is live: a full unpickle runs it.
    with open(path, "rb") as file:
        loaded = (
            torch.load(file, weights_only=False) if container == "torch_zip" else pickle.load(file)
        )
    loaded["evil"].close()
    assert marker.exists()
