"""umT5 text encoder: Wan-file conversion against an independent forward, diffusers folders,
padding, key errors and refusing pickles that run code. Everything is tiny and offline."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from headforcing.io.umt5 import UMT5TextEncoder
from headforcing.io.umt5_wan import UMT5_XXL, UMT5Shape, umt5_from_wan_state_dict

WORDS = ["&", "a", "cat", "dog", "runs", "on", "the", "beach", "at", "sunset", "red", "car", "fast"]
VOCAB = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {word: 3 + index for index, word in enumerate(WORDS)}
PAD, EOS, UNK = 0, 1, 2
# vocab 64, dim 32, attention 4 heads x 6 (24 != dim, so head_dim must come from q's shape),
# FFN 48, 2 layers, 8 buckets.
TINY = UMT5Shape(
    vocab_size=64, dim=32, dim_attn=24, dim_ffn=48, num_heads=4, num_layers=2, num_buckets=8
)
# Long enough that relative distances reach the logarithmic buckets (>= 2 with 8 buckets) and
# one of them crosses into the next log bucket (distance 16).
TEXT_LEN = 20
PROMPTS = ["a red car runs fast", "The  cat runs on the beach at sunset &amp; a dog"]


# ---------------------------------------------------------------------------------------------
# Tiny files in the real formats
# ---------------------------------------------------------------------------------------------


def _save_tokenizer(folder: Path) -> None:
    """A WordLevel tokenizer that appends </s> like umT5's, saved in the Hugging Face format."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(VOCAB, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", EOS)]
    )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    wrapped.save_pretrained(folder)


def _expected_ids(prompt: str, text_len: int) -> list[int]:
    """Token ids written out by hand: words, </s>, then padding (no tokenizer involved)."""
    words = [VOCAB.get(word, UNK) for word in prompt.lower().split()][: text_len - 1]
    ids = [*words, EOS]
    return ids + [PAD] * (text_len - len(ids))


def _wan_sizes(shape: UMT5Shape) -> dict[str, tuple[int, ...]]:
    """Names and shapes of Wan's T5Encoder state dict (wan/modules/t5.py, shared_pos=False)."""
    block = {
        "norm1.weight": (shape.dim,),
        "attn.q.weight": (shape.dim_attn, shape.dim),
        "attn.k.weight": (shape.dim_attn, shape.dim),
        "attn.v.weight": (shape.dim_attn, shape.dim),
        "attn.o.weight": (shape.dim, shape.dim_attn),
        "norm2.weight": (shape.dim,),
        "ffn.gate.0.weight": (shape.dim_ffn, shape.dim),
        "ffn.fc1.weight": (shape.dim_ffn, shape.dim),
        "ffn.fc2.weight": (shape.dim, shape.dim_ffn),
        "pos_embedding.embedding.weight": (shape.num_buckets, shape.num_heads),
    }
    sizes = {"token_embedding.weight": (shape.vocab_size, shape.dim)}
    for layer in range(shape.num_layers):
        sizes |= {f"blocks.{layer}.{name}": size for name, size in block.items()}
    return sizes | {"norm.weight": (shape.dim,)}


def _wan_state_dict(shape: UMT5Shape, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under Wan's names: norms near 1, projections scaled to keep logits sane."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, size in _wan_sizes(shape).items():
        noise = torch.randn(size, generator=generator)
        if "norm" in name:
            state[name] = 1.0 + 0.1 * noise
        elif "embedding" in name:  # token and relative-position embeddings
            state[name] = noise
        else:
            state[name] = 0.3 * noise
    return state


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("umt5_tokenizer")
    _save_tokenizer(folder)
    return folder


@pytest.fixture(scope="module")
def wan_state() -> dict[str, torch.Tensor]:
    return _wan_state_dict(TINY)


@pytest.fixture(scope="module")
def wan_checkpoint(tmp_path_factory: pytest.TempPathFactory, wan_state) -> Path:
    path = tmp_path_factory.mktemp("umt5_wan") / "models_t5_umt5-xxl-enc-bf16.pth"
    torch.save(wan_state, path)
    return path


@pytest.fixture(scope="module")
def wan_encoder(wan_checkpoint: Path, tokenizer_dir: Path) -> UMT5TextEncoder:
    return UMT5TextEncoder.from_wan_files(
        wan_checkpoint, tokenizer_dir, dtype=torch.float32, text_len=TEXT_LEN
    )


# ---------------------------------------------------------------------------------------------
# Independent reference: umT5 encoder straight from the Wan tensors
# ---------------------------------------------------------------------------------------------


def _bucket(distance: int, num_buckets: int, max_distance: int = 128) -> int:
    """T5's bidirectional bucket of ``key_pos - query_pos``, one integer at a time."""
    half = num_buckets // 2
    offset = half if distance > 0 else 0
    distance = abs(distance)
    exact = half // 2
    if distance < exact:
        return offset + distance
    log_bucket = exact + int(
        math.log(distance / exact) / math.log(max_distance / exact) * (half - exact)
    )
    return offset + min(log_bucket, half - 1)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return weight * x / torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def _reference_encode(
    state: dict[str, torch.Tensor], ids: torch.Tensor, shape: UMT5Shape
) -> torch.Tensor:
    """ids: [B, L] (padding id 0 after </s>) -> [B, L, dim] with padded positions zeroed."""
    batch, length = ids.shape
    heads, head_dim = shape.num_heads, shape.dim_attn // shape.num_heads
    lengths = [int((row != PAD).sum()) for row in ids]
    key_valid = torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]  # [B, L]
    buckets = torch.tensor(
        [
            [_bucket(key - query, shape.num_buckets) for key in range(length)]
            for query in range(length)
        ]
    )  # [Lq, Lk]
    x = state["token_embedding.weight"][ids]  # [B, L, dim]
    for layer in range(shape.num_layers):
        p = f"blocks.{layer}."
        h = _rms_norm(x, state[p + "norm1.weight"])
        q, k, v = (
            (h @ state[p + f"attn.{name}.weight"].T).view(batch, length, heads, head_dim)
            for name in "qkv"
        )
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k)  # no 1/sqrt(d) in T5
        scores = scores + state[p + "pos_embedding.embedding.weight"][buckets].permute(2, 0, 1)
        scores = scores.masked_fill(~key_valid[:, None, None, :], float("-inf"))
        attended = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(dim=-1), v)
        x = x + attended.reshape(batch, length, heads * head_dim) @ state[p + "attn.o.weight"].T
        h = _rms_norm(x, state[p + "norm2.weight"])
        gate = _gelu_tanh(h @ state[p + "ffn.gate.0.weight"].T)
        x = x + (gate * (h @ state[p + "ffn.fc1.weight"].T)) @ state[p + "ffn.fc2.weight"].T
    x = _rms_norm(x, state["norm.weight"])
    return x * key_valid[..., None]


def _clean(prompt: str) -> str:
    return " ".join(prompt.replace("&amp;", "&").split())


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


def test_shape_is_read_from_the_wan_file(wan_state) -> None:
    assert UMT5Shape.from_wan_state_dict(wan_state) == TINY


def test_wan_file_matches_independent_reference(wan_encoder, wan_state) -> None:
    embeddings = wan_encoder.encode(PROMPTS)
    assert embeddings.shape == (2, TEXT_LEN, TINY.dim)
    assert embeddings.dtype == torch.float32
    assert (wan_encoder.text_len, wan_encoder.text_dim) == (TEXT_LEN, TINY.dim)
    ids = torch.tensor([_expected_ids(_clean(prompt), TEXT_LEN) for prompt in PROMPTS])
    expected = _reference_encode(wan_state, ids, TINY)
    assert expected.abs().max() > 0.5  # the comparison is not between two near-zero tensors
    torch.testing.assert_close(embeddings, expected, atol=1e-5, rtol=0)


def test_padding_is_exactly_zero_and_prompts_are_not(wan_encoder) -> None:
    embeddings = wan_encoder.encode(PROMPTS)
    for row, prompt in enumerate(PROMPTS):
        tokens = len(_clean(prompt).split()) + 1  # words + </s>
        assert torch.equal(embeddings[row, tokens:], torch.zeros_like(embeddings[row, tokens:]))
        assert (embeddings[row, :tokens].norm(dim=-1) > 0).all()
    # A prompt's embedding does not depend on what it is batched with.
    alone = wan_encoder.encode(PROMPTS[:1])
    torch.testing.assert_close(alone[0], embeddings[0], atol=1e-6, rtol=0)


def test_bfloat16_default_runs_and_returns_float32(
    wan_checkpoint, tokenizer_dir, wan_encoder
) -> None:
    encoder = UMT5TextEncoder.from_wan_files(wan_checkpoint, tokenizer_dir, text_len=TEXT_LEN)
    embeddings = encoder.encode(PROMPTS)
    assert embeddings.dtype == torch.float32
    exact = wan_encoder.encode(PROMPTS)
    assert ((embeddings - exact).norm() / exact.norm()) < 0.05
    assert torch.equal(embeddings == 0, exact == 0)  # same padding


def test_long_prompt_is_truncated_to_text_len(wan_encoder) -> None:
    embeddings = wan_encoder.encode([" ".join(WORDS * 4)])
    assert embeddings.shape == (1, TEXT_LEN, TINY.dim)
    assert (embeddings[0].norm(dim=-1) > 0).all()


def test_encode_rejects_a_bare_string(wan_encoder) -> None:
    with pytest.raises(ValueError, match=r"\[prompt\]"):
        wan_encoder.encode("a cat")


def test_release_frees_the_encoder_and_a_switch_reads_it_again(
    wan_checkpoint, tokenizer_dir
) -> None:
    encoder = UMT5TextEncoder.from_wan_files(
        wan_checkpoint, tokenizer_dir, dtype=torch.float32, text_len=8, keep_loaded=False
    )
    first = encoder.encode(["a cat"])
    assert first.shape == (1, 8, TINY.dim) and not encoder.loaded  # freed after encoding
    # the next prompt (a switch) reads the weights again from the file, and frees them again
    assert torch.equal(encoder.encode(["a cat"]), first) and not encoder.loaded
    encoder.release()  # idempotent
    # without a way to read them again, an encode after a release says so
    kept = UMT5TextEncoder.from_wan_files(wan_checkpoint, tokenizer_dir, dtype=torch.float32)
    bare = UMT5TextEncoder(kept._loaded_model(), kept._tokenizer, text_len=8, keep_loaded=False)
    bare.encode(["a cat"])
    with pytest.raises(RuntimeError, match="released"):
        bare.encode(["a cat"])


def _diffusers_root(root: Path, tokenizer_dir: Path):
    from transformers import AutoTokenizer, UMT5EncoderModel

    torch.manual_seed(0)
    model = UMT5EncoderModel(TINY.to_config()).eval()
    model.save_pretrained(root / "text_encoder")
    AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True).save_pretrained(
        root / "tokenizer"
    )
    return model


def test_diffusers_folder_matches_the_saved_model(tmp_path, tokenizer_dir) -> None:
    model = _diffusers_root(tmp_path, tokenizer_dir)
    encoder = UMT5TextEncoder.from_diffusers(tmp_path, dtype=torch.float32, text_len=TEXT_LEN)
    embeddings = encoder.encode(PROMPTS)

    ids = torch.tensor([_expected_ids(_clean(prompt), TEXT_LEN) for prompt in PROMPTS])
    mask = (ids != PAD).long()
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).last_hidden_state * mask[..., None]
    torch.testing.assert_close(embeddings, expected, atol=1e-6, rtol=0)
    assert (embeddings[0, 6:] == 0).all() and (embeddings[0, :6].norm(dim=-1) > 0).all()


def test_diffusers_missing_folder_names_the_path(tmp_path, tokenizer_dir) -> None:
    _diffusers_root(tmp_path, tokenizer_dir)
    (tmp_path / "tokenizer").rename(tmp_path / "tok")
    with pytest.raises(FileNotFoundError, match=r"tokenizer") as error:
        UMT5TextEncoder.from_diffusers(tmp_path)
    assert str(tmp_path / "tokenizer") in str(error.value)


@pytest.mark.parametrize(
    ("edit", "missing", "unexpected"),
    [
        ("rename", "blocks.1.ffn.fc2.weight", "blocks.1.ffn.fc_out.weight"),
        ("delete", "blocks.0.norm2.weight", None),
    ],
)
def test_wan_file_with_wrong_keys_is_refused(
    tmp_path, tokenizer_dir, wan_state, edit, missing, unexpected
) -> None:
    state = dict(wan_state)
    tensor = state.pop(missing)
    if edit == "rename":
        state[unexpected] = tensor
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match="missing keys") as error:
        UMT5TextEncoder.from_wan_files(path, tokenizer_dir, dtype=torch.float32)
    message = str(error.value)
    assert missing in message and "wan/modules/t5.py" in message
    if unexpected:
        assert "unexpected keys" in message and unexpected in message


def test_transformers_layout_given_as_wan_file_is_refused(tmp_path, tokenizer_dir) -> None:
    from transformers import UMT5EncoderModel

    path = tmp_path / "hf_layout.pth"
    torch.save(UMT5EncoderModel(TINY.to_config()).state_dict(), path)
    with pytest.raises(ValueError, match=r"token_embedding\.weight.*from_diffusers"):
        UMT5TextEncoder.from_wan_files(path, tokenizer_dir)


def test_explicit_shape_must_match_the_file(wan_checkpoint, tokenizer_dir) -> None:
    with pytest.raises(ValueError, match="wrong shapes") as error:
        UMT5TextEncoder.from_wan_files(wan_checkpoint, tokenizer_dir, shape=UMT5_XXL)
    message = str(error.value)
    assert "blocks.0.attn.q.weight (24, 32) != (4096, 4096)" in message
    assert "missing keys 220: blocks.2.attn.k.weight" in message  # layers 2..23 of 24


class _WritesMarker:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('unpickled')",))


def test_pickle_that_runs_code_is_refused(tmp_path, tokenizer_dir, wan_state) -> None:
    # The payload is live: plain pickle runs it.
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_WritesMarker(probe)))
    assert probe.exists()

    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    torch.save({**wan_state, "payload": _WritesMarker(marker)}, path)
    with pytest.raises(ValueError, match="weights_only=True"):
        UMT5TextEncoder.from_wan_files(path, tokenizer_dir)
    assert not marker.exists()


def test_xxl_shape_matches_google_umt5_xxl_config() -> None:
    # Values of google/umt5-xxl's config.json, written out here.
    config = UMT5_XXL.to_config()
    assert (config.vocab_size, config.d_model, config.d_kv, config.d_ff) == (
        256384,
        4096,
        64,
        10240,
    )
    assert (config.num_heads, config.num_layers) == (64, 24)
    assert (config.relative_attention_num_buckets, config.relative_attention_max_distance) == (
        32,
        128,
    )
    assert config.is_gated_act and config.dense_act_fn == "gelu_new"


def test_xxl_wan_layout_converts_without_memory() -> None:
    """Every key of the full-size Wan file lands on the full-size model (meta tensors only)."""
    state = {name: torch.empty(size, device="meta") for name, size in _wan_sizes(UMT5_XXL).items()}
    model = umt5_from_wan_state_dict(state)
    assert UMT5Shape.from_wan_state_dict(state) == UMT5_XXL
    assert model.config.d_model == 4096 and len(model.encoder.block) == 24
    assert model.encoder.embed_tokens is model.shared
