"""The real-model path end to end, on tiny files written in exactly the real formats:
a Self-Forcing ``.pt``, Wan's umT5 ``.pth`` + tokenizer folder and ``Wan2.1_VAE.pth``."""

import torch

from headforcing.cache import make_policy
from headforcing.io.video import VideoWriter, read_video
from headforcing.io.wan_files import (
    WAN_TEXT_ENCODER,
    WAN_TOKENIZER,
    WAN_VAE,
    RealFiles,
    load_real_parts,
)
from headforcing.model import Preset, VideoConfig, WanConfig
from headforcing.pipeline import Pipeline, random_model

from . import test_umt5, test_wan_vae

CONFIG = WanConfig(
    dim=64,
    ffn_dim=96,
    freq_dim=32,
    text_dim=test_umt5.TINY.dim,
    text_len=test_umt5.TEXT_LEN,
    num_heads=4,
    num_layers=2,
)
PRESET = Preset("tiny-real-test", CONFIG, VideoConfig(height=64, width=64), "test")


def write_wan_folder(root):
    root.mkdir()
    test_umt5._save_tokenizer(root / WAN_TOKENIZER)
    torch.save(test_umt5._wan_state_dict(test_umt5.TINY), root / WAN_TEXT_ENCODER)
    test_wan_vae.random_wan_file(test_wan_vae.TINY_WAN_LAYOUT, root / WAN_VAE)


def write_self_forcing_checkpoint(path):
    model = random_model(PRESET, seed=5)
    weights = {f"model.{name}": tensor for name, tensor in model.state_dict().items()}
    torch.save({"generator": weights, "generator_ema": weights}, path)
    return model


def test_tiny_real_path_writes_a_playable_mp4(tmp_path):
    write_wan_folder(tmp_path / "wan")
    saved = write_self_forcing_checkpoint(tmp_path / "self_forcing_dmd.pt")
    files = RealFiles(
        model="self-forcing", checkpoint=tmp_path / "self_forcing_dmd.pt", wan_dir=tmp_path / "wan"
    )
    model, text_encoder, decoder = load_real_parts(
        files,
        CONFIG,
        device=torch.device("cpu"),
        dtype=torch.float32,
        vae_config=test_wan_vae.TINY_WAN_LAYOUT,
    )
    loaded = model.state_dict()
    assert all(torch.equal(loaded[name], tensor) for name, tensor in saved.state_dict().items())
    pipeline = Pipeline(PRESET, model, text_encoder, decoder)
    out = tmp_path / "video.mp4"
    with VideoWriter(out, fps=16) as writer:
        for chunk in pipeline.stream("a red car runs fast", 6, make_policy("window")):
            writer.write(chunk.frames[0])
    frames = read_video(out)
    assert frames.shape == (1 + 4 * 5, 64, 64, 3)


def test_a_freed_text_encoder_is_read_again_at_a_prompt_switch(tmp_path):
    """The 40gb mode's umT5: freed after the first prompt, read again for the second."""
    from headforcing.schedule import PromptSchedule, PromptSegment

    write_wan_folder(tmp_path / "wan")
    write_self_forcing_checkpoint(tmp_path / "self_forcing_dmd.pt")
    files = RealFiles(
        model="self-forcing", checkpoint=tmp_path / "self_forcing_dmd.pt", wan_dir=tmp_path / "wan"
    )
    assert files.text_encoder_shape() == test_umt5.TINY  # read before loading anything
    model, text_encoder, decoder = load_real_parts(
        files,
        CONFIG,
        device=torch.device("cpu"),
        dtype=torch.float32,
        vae_config=test_wan_vae.TINY_WAN_LAYOUT,
        keep_text_encoder=False,
    )
    pipeline = Pipeline(PRESET, model, text_encoder, decoder)
    schedule = PromptSchedule(
        (PromptSegment(0, "a red car runs fast"), PromptSegment(3, "a cat runs"))
    )
    chunks = list(pipeline.stream(schedule, 6, make_policy("window")))
    assert [chunk.prompt for chunk in chunks] == ["a red car runs fast", "a cat runs"]
    assert not text_encoder.loaded
