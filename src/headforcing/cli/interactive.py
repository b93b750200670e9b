"""``headforcing interactive``: a local web page that shows the video as it grows and takes
prompts while it runs (docs/interactive.md)."""

from __future__ import annotations

import argparse

from headforcing.cli import options
from headforcing.cli.arguments import (
    FRAMES_HELP,
    add_model_arguments,
    add_policy_arguments,
    add_real_model_arguments,
    add_scale_argument,
    add_switch_argument,
)


def add_parser(commands) -> None:
    interactive = commands.add_parser(
        "interactive", help="a local web page that shows the video as it grows, takes prompts"
    )
    interactive.add_argument("prompt", help="the first prompt")
    length = interactive.add_mutually_exclusive_group()
    length.add_argument("--seconds", type=float, default=60.0, help="run length")
    length.add_argument("--frames", type=int, help=f"run length in {FRAMES_HELP}")
    interactive.add_argument(
        "--port", type=int, default=8000, help="on 127.0.0.1; 0: any free port"
    )
    interactive.add_argument("--out", default="interactive.mp4", help="the growing MP4")
    interactive.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    interactive.add_argument("--seed", type=int, default=0, help="seed of the sampler's noise")
    add_scale_argument(interactive)
    interactive.add_argument(
        "--no-pace", action="store_true", help="generate as fast as possible, not in real time"
    )
    interactive.add_argument(
        "--exit-when-done", action="store_true", help="stop the server when the run is done"
    )
    add_switch_argument(interactive.add_argument_group("prompt switch"))
    add_model_arguments(interactive)
    add_real_model_arguments(interactive)
    add_policy_arguments(interactive)
    interactive.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from headforcing.heads.lookup import attach_head_map
    from headforcing.heads.store import store_map
    from headforcing.interactive import LiveServer, LiveSession
    from headforcing.interactive.run import serve_until_done
    from headforcing.io.provenance import run_metadata
    from headforcing.io.scale import display_scale
    from headforcing.io.text import check_prompt
    from headforcing.prompts import check_loaded_prompts

    # prepare input: the arguments, then the port (bound now: a busy port fails before loading)
    out = options.check_video_out(args)
    check_prompt(args.prompt, "PROMPT")
    device, dtype = options.check_run_args(args)
    num_frames = options.length_from_args(args)
    policy = options.policy_from_args(args)
    head_map = options.head_map_from_args(args, policy)
    options.check_memory(args, policy, num_frames, device, dtype, args.prompt, head_map)
    server = LiveServer.bind(args.port)
    try:
        pipeline = options.build_pipeline(args)
        check_loaded_prompts(pipeline, args.prompt)
        policy, _ = attach_head_map(policy, head_map, pipeline)
        session = LiveSession(
            pipeline,
            policy,
            args.prompt,
            num_frames,
            out,
            seed=args.seed,
            switch=options.switch_from_args(args),
            pace=not args.no_pace,
            overwrite=args.overwrite,
            on_head_map=lambda head_map: store_map(head_map, pipeline.weights_id),
            check_prompt=lambda prompt: check_loaded_prompts(pipeline, prompt, where=None),
            scale=display_scale(
                pipeline.height, pipeline.width, args.scale, real_weights=pipeline.real_weights
            ),
            metadata=run_metadata(pipeline, args.prompt, args.seed, policy, num_frames),
        )
    except BaseException:
        server.server_close()
        raise
    server.start(session)  # the page is served from now on
    print(f"open {server.url} (video: {out}; Ctrl-C stops)", flush=True)
    return serve_until_done(
        server, session, out, stay_up=not args.exit_when_done, report=options.say
    )
