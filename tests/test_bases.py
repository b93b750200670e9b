"""The bases ``--model`` names: Causal Forcing's chunk-wise checkpoint, written in exactly its
layout, loads through the command line and is the model it was written from; each base's
documented config (sampler, EMA, policy defaults, switch) is what a run gets."""

import pytest
import torch

from headforcing.bases import BASES, base_policy, get_base
from headforcing.cli import build_parser, main
from headforcing.cli.options import build_pipeline, policy_from_args, switch_from_args
from headforcing.io.video import read_video
from headforcing.model import get_preset

from . import test_umt5, test_wan_vae
from .conftest import random_model
from .reference import relative_error
from .test_checkpoints import flow

TINY = get_preset("tiny").model


def write_diffusers_parts(root):
    """text_encoder/, tokenizer/ and vae/ of a diffusers Wan folder, at the tiny preset's text
    width (umT5 dim 32)."""
    from transformers import UMT5EncoderModel

    test_umt5._save_tokenizer(root / "tokenizer")
    torch.manual_seed(0)
    UMT5EncoderModel(test_umt5.TINY.to_config()).eval().save_pretrained(root / "text_encoder")
    test_wan_vae.tiny_vae(test_wan_vae.TINY).save_pretrained(root / "vae")


def write_causal_forcing(path, fsdp: bool, drop: str | None = None):
    """``chunkwise/causal_forcing.pt`` as Causal Forcing saves it: ``generator`` and
    ``generator_ema`` state dicts of its wrapper, ``model.`` (+ FSDP's inner prefix) + Wan
    names. Returns the two source models."""
    generator, ema = random_model(TINY, seed=1), random_model(TINY, seed=2)
    prefix = "model._fsdp_wrapped_module." if fsdp else "model."

    def wrapped(model):
        return {prefix + name: tensor.clone() for name, tensor in model.state_dict().items()}

    weights = wrapped(generator)
    if drop is not None:
        del weights[prefix + drop]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"generator": weights, "generator_ema": wrapped(ema)}, path)
    return generator, ema


def cli_args(tmp_path, *extra):
    return [
        "generate",
        "a red car runs fast",
        "--model",
        "causal-forcing",
        "--checkpoint",
        str(tmp_path / "chunkwise" / "causal_forcing.pt"),
        "--diffusers-dir",
        str(tmp_path / "wan"),
        "--preset",
        "tiny",
        "--height",
        "64",
        "--width",
        "64",
        "--device",
        "cpu",
        "--dtype",
        "float32",
        *extra,
    ]


@pytest.mark.parametrize("fsdp", [False, True])
def test_causal_forcing_chunkwise_loads_through_the_cli(tmp_path, fsdp):
    write_diffusers_parts(tmp_path / "wan")
    generator, ema = write_causal_forcing(tmp_path / "chunkwise" / "causal_forcing.pt", fsdp)
    assert relative_error(flow(ema), flow(generator)) > 1e-2  # the two are told apart

    # its README's inference loads 'generator' (no EMA); --ema takes the other one
    for extra, source in (((), generator), (("--ema",), ema)):
        args = build_parser().parse_args(cli_args(tmp_path, *extra))
        pipeline = build_pipeline(args)
        loaded = pipeline.model.state_dict()
        for name, tensor in source.state_dict().items():
            assert relative_error(loaded[name], tensor) <= 1e-5, name
        assert relative_error(flow(pipeline.model), flow(source)) <= 1e-5
        assert pipeline.schedule == BASES["causal-forcing"].sampler

    # and a whole run through the command line; --scale auto writes real weights as made
    out = tmp_path / "video.mp4"
    assert main([*cli_args(tmp_path, "--frames", "6"), "--out", str(out)]) == 0
    assert read_video(out).shape == (1 + 4 * 5, 64, 64, 3)


def test_the_api_loads_real_files_by_path_as_the_cli_does(tmp_path):
    """``hf.load_pipeline`` is the command line's loader: a Causal Forcing checkpoint written
    in its real layout loads by path through both into the same model, the one it was written
    from (its 'generator', or with ``ema=True`` its 'generator_ema'), with the base's sampler."""
    import headforcing as hf

    write_diffusers_parts(tmp_path / "wan")
    checkpoint = tmp_path / "chunkwise" / "causal_forcing.pt"
    generator, ema = write_causal_forcing(checkpoint, fsdp=True)
    for use_ema, source in ((None, generator), (True, ema)):
        argv = cli_args(tmp_path, *(("--ema",) if use_ema else ()))
        by_cli = build_pipeline(build_parser().parse_args(argv))
        by_api = hf.load_pipeline(
            model="causal-forcing",
            checkpoint=str(checkpoint),  # paths as strings, as a user types them
            diffusers_dir=str(tmp_path / "wan"),
            preset="tiny",
            height=64,
            width=64,
            ema=use_ema,
        )
        api_weights, cli_weights = by_api.model.state_dict(), by_cli.model.state_dict()
        assert api_weights.keys() == cli_weights.keys()
        assert all(torch.equal(api_weights[name], cli_weights[name]) for name in cli_weights)
        for name, tensor in source.state_dict().items():
            assert relative_error(api_weights[name], tensor) <= 1e-5, name
        assert by_api.schedule == by_cli.schedule == BASES["causal-forcing"].sampler
        assert by_api.weights_id == by_cli.weights_id and by_api.real_weights
        assert (by_api.height, by_api.width, by_api.model.dtype) == (64, 64, torch.float32)
    assert not torch.equal(flow(generator), flow(ema))  # the two sources are told apart
    with pytest.raises(ValueError, match="checkpoint= names a real model's files: give model="):
        hf.load_pipeline(checkpoint=checkpoint)  # not the toy model, silently


def test_causal_forcing_missing_key_is_named(tmp_path, capsys):
    write_diffusers_parts(tmp_path / "wan")
    path = tmp_path / "chunkwise" / "causal_forcing.pt"
    write_causal_forcing(path, fsdp=True, drop="blocks.1.ffn.2.bias")
    capsys.readouterr()
    status = main([*cli_args(tmp_path, "--frames", "3"), "--out", str(tmp_path / "v.mp4")])
    err = capsys.readouterr().err
    assert status == 2, err
    assert "1 missing (blocks.1.ffn.2.bias)" in err and "causal_forcing.pt" in err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("headforcing generate: error: ")


def test_each_base_has_one_documented_config():
    for name, base in BASES.items():
        assert base.chunk_frames == 3 and base.trained_frames == 21, name
        assert base.source, name
    # Self-Forcing, Causal Forcing, LongLive: [1000, 750, 500, 250] warped through shift 5
    for name in ("self-forcing", "causal-forcing", "longlive"):
        t = [1000 * sigma for sigma in BASES[name].sampler.sigmas()]
        assert t == pytest.approx([1000, 937.5, 833.333, 625.0], abs=1e-3), name
    # CausVid: [1000, 757, 522], not warped
    t = [1000 * sigma for sigma in BASES["causvid"].sampler.sigmas()]
    assert t == pytest.approx([1000, 757, 522])
    assert [
        BASES[n].use_ema for n in ("self-forcing", "causal-forcing", "longlive", "causvid")
    ] == [
        True,
        False,
        False,
        True,
    ]
    with pytest.raises(ValueError, match="unknown --model 'sora'; valid models: self-forcing"):
        get_base("sora")


def test_longlive_defaults_reproduce_longlives_inference():
    args = build_parser().parse_args(["generate", "x", "--model", "longlive"])
    policy = policy_from_args(args)
    assert (policy.name, policy.window_frames, policy.sink_frames) == ("sink", 12, 3)
    assert policy.positions == "absolute" and switch_from_args(args) == "recache"
    # an option given wins; a policy LongLive has no values for gets ours (relative positions)
    args = build_parser().parse_args(["generate", "x", "--model", "longlive", "--sink-frames", "1"])
    assert policy_from_args(args).sink_frames == 1 and policy_from_args(args).window_frames == 12
    assert base_policy(BASES["longlive"], "head_forcing").positions == "relative"
    # without --model: the window, relative positions, the policy's switch
    args = build_parser().parse_args(["generate", "x"])
    policy = policy_from_args(args)
    assert (policy.name, policy.window_frames, policy.positions) == ("window", 21, "relative")
    assert switch_from_args(args) is None
