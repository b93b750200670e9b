"""Prompts checked against the loaded pipeline, before any chunk: every prompt fits its text
encoder, and the toy model is given toy-world prompts only."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from headforcing.pipeline import Pipeline
    from headforcing.schedule import PromptSchedule


def check_loaded_prompts(
    pipeline: Pipeline, prompts: str | PromptSchedule, where: str | None = "PROMPT"
) -> None:
    """Once the model is loaded, before any chunk: every prompt fits its text encoder (none
    longer than it reads), and the toy model is given toy-world prompts only. ``where``: the
    source of a single prompt (a schedule names its own file and lines)."""
    from headforcing.io.text import check_prompt

    if isinstance(prompts, str):
        check_prompt(prompts, where, pipeline.text_encoder)
    else:
        prompts.check_prompts(pipeline.text_encoder)
    check_toy_prompts(pipeline, prompts)


def check_toy_prompts(pipeline: Pipeline, prompts: str | PromptSchedule) -> None:
    """The toy model only knows toy-world prompts: refuse others before generating."""
    if pipeline.preset.name != "toy" or not pipeline.weights_id.startswith("toy-"):
        return
    from headforcing.toyworld.world import Scene

    texts = [prompts] if isinstance(prompts, str) else [s.prompt for s in prompts.segments]
    for text in texts:
        try:
            Scene.from_prompt(text)
        except ValueError as error:
            raise ValueError(
                f"{error}. The default model is the toy-world model; give --model and its files "
                "for a real one, or --preset tiny to run any prompt with random weights"
            ) from None
