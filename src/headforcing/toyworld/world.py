"""The toy world: a static textured background and a few coloured sprites that move and bounce.

Everything is known: the background is a fixed function of the prompt's background words, the
sprites' colours and shapes come from the prompt, and their motion is simulated (one pixel per frame
along each axis, elastic bounces off the walls and off each other, never overlapping), so any
metric can be computed against the truth. Frames are small (32 x 32 by default) and rendered
exactly in uint8, without anti-aliasing, so that a pixel is either background or sprite.

A scene is described by a prompt such as ``"two red circles and a blue square bounce over a green
striped background"``; :meth:`Scene.prompt` writes it and :meth:`Scene.from_prompt` reads it back.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

FRAME_SIZE = 32
# pixels per frame, per axis: every sprite moves diagonally by whole pixels, so two frames of
# context determine the next exactly (fractional speeds would make the rounding phase ambiguous
# and a model trained on CPU draws the mean of the phases: a blur)
MAX_SPEED = 1
SPRITE_GAP = 2  # background pixels kept between any two sprites

SPRITE_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "blue": (40, 90, 235),
    "yellow": (240, 220, 40),
    "white": (245, 245, 245),
    "cyan": (40, 220, 220),
    "magenta": (220, 50, 220),
}
# (light, dark) shade of each background colour: muted, far from every sprite colour
BACKGROUND_COLOURS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "green": ((50, 110, 55), (25, 60, 30)),
    "gray": ((100, 100, 100), (55, 55, 55)),
    "brown": ((105, 75, 45), (60, 40, 25)),
    "purple": ((80, 50, 100), (45, 25, 60)),
}
PATTERNS = ("striped", "checkered", "dotted")
SHAPES = ("circle", "square")
COUNT_WORDS = {1: "a", 2: "two", 3: "three"}
MAX_SPRITES = 3


def _shape_stamp(shape: str) -> np.ndarray:
    """Boolean mask of one sprite, ``[size, size]``."""
    if shape == "circle":
        coords = np.arange(7) - 3
        return coords[:, None] ** 2 + coords[None, :] ** 2 <= 10
    if shape == "square":
        return np.ones((6, 6), dtype=bool)
    raise ValueError(f"unknown shape {shape!r}; valid shapes: {', '.join(SHAPES)}")


STAMPS: dict[str, np.ndarray] = {shape: _shape_stamp(shape) for shape in SHAPES}


@dataclass(frozen=True)
class Sprite:
    """One sprite: a colour name from ``SPRITE_COLOURS`` and a shape from ``SHAPES``."""

    colour: str
    shape: str

    def __post_init__(self) -> None:
        if self.colour not in SPRITE_COLOURS:
            valid = ", ".join(SPRITE_COLOURS)
            raise ValueError(f"unknown sprite colour {self.colour!r}; valid colours: {valid}")
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; valid shapes: {', '.join(SHAPES)}")

    @property
    def rgb(self) -> tuple[int, int, int]:
        return SPRITE_COLOURS[self.colour]

    @property
    def stamp(self) -> np.ndarray:
        return STAMPS[self.shape]

    @property
    def area(self) -> int:
        return int(self.stamp.sum())


@dataclass(frozen=True)
class Scene:
    """What a prompt says: the sprites (1-3) and the background (colour and pattern).

    Sprites are kept sorted by (colour, shape) so that a scene and the prompt written from it
    describe the same thing in one canonical order.
    """

    sprites: tuple[Sprite, ...]
    background: str = "green"
    pattern: str = "striped"
    size: int = FRAME_SIZE

    def __post_init__(self) -> None:
        if not 1 <= len(self.sprites) <= MAX_SPRITES:
            raise ValueError(f"a scene holds 1 to {MAX_SPRITES} sprites, got {len(self.sprites)}")
        if self.background not in BACKGROUND_COLOURS:
            valid = ", ".join(BACKGROUND_COLOURS)
            raise ValueError(f"unknown background {self.background!r}; valid: {valid}")
        if self.pattern not in PATTERNS:
            raise ValueError(f"unknown pattern {self.pattern!r}; valid: {', '.join(PATTERNS)}")
        if self.size < 16 or self.size % 8:
            raise ValueError(f"frame size must be a multiple of 8 and >= 16, got {self.size}")
        ordered = tuple(sorted(self.sprites, key=lambda s: (s.colour, s.shape)))
        object.__setattr__(self, "sprites", ordered)

    def prompt(self) -> str:
        """E.g. ``"a blue square and two red circles bounce over a green striped background"``
        (the sprite phrases in canonical order)."""
        groups = Counter((s.colour, s.shape) for s in self.sprites)
        phrases = []
        for (colour, shape), count in sorted(groups.items()):
            noun = shape if count == 1 else shape + "s"
            phrases.append(f"{COUNT_WORDS[count]} {colour} {noun}")
        subject = (
            phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
        )
        verb = "bounces" if len(self.sprites) == 1 else "bounce"
        return f"{subject} {verb} over a {self.background} {self.pattern} background"

    @classmethod
    def from_prompt(cls, prompt: str, size: int = FRAME_SIZE) -> Scene:
        """Parse a prompt written by :meth:`prompt` (case and extra spaces are ignored)."""
        text = " ".join(prompt.lower().replace(",", " , ").split())
        match = _PROMPT.fullmatch(text)
        if match is None:
            raise ValueError(
                f"cannot parse toy-world prompt {prompt!r}; expected e.g. "
                "'two red circles and a blue square bounce over a green striped background'"
            )
        sprites = []
        for count_word, colour, noun in _PHRASE.findall(match.group("subject")):
            count = {v: k for k, v in COUNT_WORDS.items()}[count_word]
            shape = noun[:-1] if noun.endswith("s") else noun
            if (count == 1) == noun.endswith("s"):
                raise ValueError(f"count and noun disagree in {count_word} {noun!r} of {prompt!r}")
            sprites += [Sprite(colour, shape)] * count
        return cls(tuple(sprites), match.group("background"), match.group("pattern"), size)

    def background_image(self) -> np.ndarray:
        """The static background, ``[H, W, 3]`` uint8."""
        light, dark = (np.array(c, dtype=np.uint8) for c in BACKGROUND_COLOURS[self.background])
        rows, cols = np.mgrid[0 : self.size, 0 : self.size]
        if self.pattern == "striped":  # vertical stripes, 2 pixels light, 2 dark
            is_light = (cols // 2) % 2 == 0
        elif self.pattern == "checkered":  # 4 x 4 checks
            is_light = ((rows // 4) + (cols // 4)) % 2 == 0
        else:  # dotted: a 2 x 2 light dot every 6 pixels, staggered by row
            is_light = ((rows % 6) < 2) & (((cols + 3 * ((rows // 6) % 2)) % 6) < 2)
        return np.where(is_light[..., None], light, dark)


_COLOUR_RE = "|".join(SPRITE_COLOURS)
_SHAPE_RE = "|".join(SHAPES)
_COUNT_RE = "|".join(COUNT_WORDS.values())
_PHRASE_RE = rf"(?:{_COUNT_RE}) (?:{_COLOUR_RE}) (?:{_SHAPE_RE})s?"
_PHRASE = re.compile(rf"({_COUNT_RE}) ({_COLOUR_RE}) ((?:{_SHAPE_RE})s?)")
_PROMPT = re.compile(
    rf"(?P<subject>{_PHRASE_RE}(?:(?: ,| and) {_PHRASE_RE})*) bounces? over an? "
    rf"(?P<background>{'|'.join(BACKGROUND_COLOURS)}) (?P<pattern>{'|'.join(PATTERNS)}) background"
)


@dataclass
class Motion:
    """Sprite state: top-left corners ``positions [N, 2]`` (row, col) and ``velocities [N, 2]``
    in pixels per frame (whole numbers, stored as floats)."""

    positions: np.ndarray
    velocities: np.ndarray
    sizes: np.ndarray = field(repr=False)  # [N] stamp side of every sprite


# top-left corner and direction (row, col) of slot k of a canonical start: sprite k (in the
# scene's canonical order) starts in slot k, whatever the sprite count, so what the model draws
# in a slot depends on one phrase of the prompt only (all three slots fit apart)
START_SLOTS: tuple[tuple[int, int], ...] = ((4, 4), (4, 20), (20, 12))
START_SIGNS = ((1.0, 1.0), (1.0, -1.0), (-1.0, 1.0))


def canonical_motion(scene: Scene) -> Motion:
    """The start a prompt implies: sprite ``k`` (in the scene's canonical order) in slot ``k``,
    moving in the slot's direction.

    Why a fixed start: the AR sampler (Self-Forcing's: predict x0, re-noise with fresh noise)
    turns a model that was not distilled into one that draws the conditional *mean*. A first
    chunk whose sprites could be anywhere would be a blur of all places; a start that the prompt
    determines is sharp, and the rest of the video follows from physics.
    """
    count = len(scene.sprites)
    sizes = np.array([s.stamp.shape[0] for s in scene.sprites])
    slots = np.array(START_SLOTS[:count], dtype=float) * scene.size / FRAME_SIZE
    velocities = MAX_SPEED * np.array(START_SIGNS[:count])
    positions = np.minimum(np.round(slots), (scene.size - sizes)[:, None])
    return Motion(positions, velocities, sizes)


def random_motion(scene: Scene, rng: np.random.Generator) -> Motion:
    """Non-overlapping whole-pixel start positions and random diagonal directions."""
    sizes = np.array([s.stamp.shape[0] for s in scene.sprites])
    for _ in range(1000):
        positions = rng.integers(0, scene.size - sizes[:, None] + 1, size=(len(sizes), 2))
        if not _conflicts(positions, sizes):
            break
    else:  # pragma: no cover - 3 small sprites always fit in a 32 x 32 frame
        raise RuntimeError("could not place the sprites without overlap")
    signs = rng.choice([-1.0, 1.0], size=(len(sizes), 2))
    return Motion(positions.astype(float), MAX_SPEED * signs, sizes)


def _conflicts(corners: np.ndarray, sizes: np.ndarray) -> list[tuple[int, int]]:
    """Pairs of sprites closer than ``SPRITE_GAP`` background pixels (boxes at ``corners``)."""
    pairs = []
    for i in range(len(sizes)):
        for j in range(i + 1, len(sizes)):
            apart = [
                corners[i, a] + sizes[i] + SPRITE_GAP <= corners[j, a]
                or corners[j, a] + sizes[j] + SPRITE_GAP <= corners[i, a]
                for a in range(2)
            ]
            if not any(apart):
                pairs.append((i, j))
    return pairs


def step(motion: Motion, frame_size: int) -> None:
    """Advance one frame in place: move, bounce off walls, bounce off each other."""
    previous = motion.positions.copy()
    moved = motion.positions + motion.velocities
    limit = (frame_size - motion.sizes)[:, None].astype(float)
    # walls: reflect the position and the velocity
    low, high = moved < 0, moved > limit
    moved = np.where(low, -moved, np.where(high, 2 * limit - moved, moved))
    motion.velocities = np.where(low | high, -motion.velocities, motion.velocities)
    # sprites: a colliding pair swaps velocities (equal masses) and stays where it was;
    # repeat until no pair conflicts (all reverted is the previous, valid state)
    swapped: set[tuple[int, int]] = set()
    while pairs := _conflicts(np.round(moved), motion.sizes):
        for i, j in pairs:
            moved[[i, j]] = previous[[i, j]]
            if (i, j) not in swapped:
                motion.velocities[[i, j]] = motion.velocities[[j, i]]
                swapped.add((i, j))
    motion.positions = moved


def simulate(
    scene: Scene, num_frames: int, seed: int | None = None, motion: Motion | None = None
) -> np.ndarray:
    """Rounded top-left corners of every sprite in every frame, ``[F, N, 2]`` int.

    ``motion`` continues an earlier simulation (it is advanced in place); otherwise the start is
    the prompt's canonical one (``seed=None``, what the shipped model generates) or a random one
    drawn from ``seed``.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if motion is None and seed is None:
        motion = canonical_motion(scene)
    elif motion is None:
        motion = random_motion(scene, np.random.default_rng(seed))
    corners = np.empty((num_frames, len(scene.sprites), 2), dtype=np.int64)
    for frame in range(num_frames):
        corners[frame] = np.round(motion.positions)
        step(motion, scene.size)
    return corners


def render(
    scene: Scene,
    corners: np.ndarray,
    light_radius: int = 0,
    background: np.ndarray | None = None,
) -> np.ndarray:
    """Frames ``[F, H, W, 3]`` uint8 of ``scene`` with sprites at ``corners [F, N, 2]``.

    ``light_radius > 0`` renders the lit world (a training option, :func:`lit_mask`): the first
    frame shows the whole background, every later frame only the background within that many
    pixels of a sprite's centre, black elsewhere. ``background``: an image ``[H, W, 3]`` in
    place of the prompt's (:func:`random_background`).
    """
    background = scene.background_image() if background is None else background
    frames = np.repeat(background[None], len(corners), axis=0)
    if light_radius > 0:
        frames = frames * lit_mask(scene, corners, light_radius)[..., None]
    for frame, frame_corners in zip(frames, corners, strict=True):
        for sprite, (row, col) in zip(scene.sprites, frame_corners, strict=True):
            stamp = sprite.stamp
            patch = frame[row : row + stamp.shape[0], col : col + stamp.shape[1]]
            patch[stamp] = sprite.rgb
    return frames


def lit_mask(scene: Scene, corners: np.ndarray, light_radius: int) -> np.ndarray:
    """``[F, H, W]`` boolean: where the lit world shows the background.

    The first frame is lit everywhere (the shot that establishes the scene); in every later
    frame each sprite lights the pixels within ``light_radius`` of its centre. Of all the
    frames only the first shows the whole background, as a video's first frame shows the scene
    that later frames show only in part: where a sprite moves into a part the recent frames did
    not light, the first chunk is the one frame that shows it (the prompt also fixes it, unless
    the background is drawn at random, :func:`random_background`).
    """
    rows, cols = np.mgrid[0 : scene.size, 0 : scene.size]
    sizes = np.array([s.stamp.shape[0] for s in scene.sprites])
    centres = corners + (sizes[:, None] - 1) / 2  # [F, N, 2]
    distance2 = (rows[None, None] - centres[..., 0, None, None]) ** 2 + (
        cols[None, None] - centres[..., 1, None, None]
    ) ** 2
    lit = (distance2 <= light_radius**2).any(axis=1)
    lit[0] = True
    return lit


RANDOM_CELL = 4  # pixels per side of a cell of random_background


def random_background(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """A background the prompt does not determine, ``[H, W, 3]`` uint8: cells of
    ``RANDOM_CELL`` pixels, each the light or the dark shade of the scene's background colour
    at random. Only a frame that shows it can tell it (a training option for image-to-video
    probes: the first chunk is then given, never generated)."""
    light, dark = (np.array(c, dtype=np.uint8) for c in BACKGROUND_COLOURS[scene.background])
    cells = scene.size // RANDOM_CELL
    is_light = rng.random((cells, cells)) < 0.5
    is_light = is_light.repeat(RANDOM_CELL, axis=0).repeat(RANDOM_CELL, axis=1)
    return np.where(is_light[..., None], light, dark)


def render_clip(
    scene: Scene, num_frames: int, seed: int | None = None, light_radius: int = 0
) -> np.ndarray:
    """A ground-truth clip of any length: ``[F, H, W, 3]`` uint8.

    ``seed=None``: the canonical start of the prompt (:func:`canonical_motion`), the clip the
    shipped model was trained to generate; an int: a random start (same seed, same clip).
    ``light_radius``: the lit world (:func:`render`).
    """
    return render(scene, simulate(scene, num_frames, seed), light_radius)


def render_schedule(
    schedule: list[tuple[int, Scene]], num_frames: int, seed: int | None = None
) -> tuple[np.ndarray, list[Scene]]:
    """A clip whose prompt changes mid-video: ``schedule`` is ``[(first_frame, scene), ...]``
    starting at frame 0. The first scene starts canonically (``seed=None``) or randomly. Sprites
    that exist before and after a switch keep moving where they were (they may change colour or
    shape); added sprites are placed without overlap (drawn from ``seed``, 0 if None).

    Returns frames ``[F, H, W, 3]`` uint8 and the scene of every frame.
    """
    if not schedule or schedule[0][0] != 0:
        raise ValueError("a prompt schedule must start at frame 0")
    starts = [start for start, _ in schedule]
    if starts != sorted(set(starts)) or starts[-1] >= num_frames:
        raise ValueError(f"schedule frames must increase and lie below {num_frames}: {starts}")
    rng = np.random.default_rng(0 if seed is None else seed)
    frames, scenes = [], []
    motion: Motion | None = canonical_motion(schedule[0][1]) if seed is None else None
    bounds = [*starts[1:], num_frames]
    for (start, scene), end in zip(schedule, bounds, strict=True):
        motion = _carry_motion(motion, scene, rng)
        frames.append(render(scene, simulate(scene, end - start, motion=motion)))
        scenes += [scene] * (end - start)
    return np.concatenate(frames), scenes


def _carry_motion(previous: Motion | None, scene: Scene, rng: np.random.Generator) -> Motion:
    fresh = random_motion(scene, rng)
    if previous is None:
        return fresh
    if previous.sizes.shape == fresh.sizes.shape and (previous.sizes == fresh.sizes).all():
        return previous  # the same sprites (a canonical start, or a colour change)
    sizes = np.array([s.stamp.shape[0] for s in scene.sprites])
    keep = min(len(previous.sizes), len(sizes))
    positions, velocities = fresh.positions.copy(), fresh.velocities.copy()
    positions[:keep] = np.minimum(previous.positions[:keep], (scene.size - sizes[:keep])[:, None])
    velocities[:keep] = previous.velocities[:keep]
    for _ in range(1000):  # re-draw added sprites until nothing overlaps
        if not _conflicts(np.round(positions), sizes):
            break
        added = (len(sizes) - keep, 2)
        positions[keep:] = rng.integers(0, scene.size - sizes[keep:, None] + 1, added)
        if keep == len(sizes):  # a changed shape made kept sprites collide: start afresh
            positions = fresh.positions
    return Motion(positions, velocities, sizes)


def random_scene(rng: np.random.Generator, size: int = FRAME_SIZE) -> Scene:
    """A random scene: 1-3 sprites of random colour and shape, random background."""
    count = int(rng.integers(1, MAX_SPRITES + 1))
    colours, shapes = list(SPRITE_COLOURS), list(SHAPES)
    sprites = tuple(
        Sprite(colours[rng.integers(len(colours))], shapes[rng.integers(len(shapes))])
        for _ in range(count)
    )
    backgrounds = list(BACKGROUND_COLOURS)
    return Scene(
        sprites,
        backgrounds[rng.integers(len(backgrounds))],
        PATTERNS[rng.integers(len(PATTERNS))],
        size,
    )


def vocabulary() -> list[str]:
    """Every word a toy prompt can use (the text encoder's vocabulary), sorted."""
    words = {"and", "bounce", "bounces", "over", "a", "an", "background", ","}
    words |= set(COUNT_WORDS.values()) | set(SPRITE_COLOURS) | set(BACKGROUND_COLOURS)
    words |= set(PATTERNS) | set(SHAPES) | {shape + "s" for shape in SHAPES}
    return sorted(words)
