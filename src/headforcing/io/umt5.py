"""umT5-XXL, Wan2.1's prompt encoder, as a :class:`~headforcing.io.text.TextEncoder`.

The network is transformers' ``UMT5EncoderModel``; two on-disk formats load into it:

- Wan2.1's own file ``models_t5_umt5-xxl-enc-bf16.pth``: a plain torch state dict in the layout of
  ``T5Encoder`` in the Wan repository (``wan/modules/t5.py``), read with ``weights_only=True`` and
  renamed by :func:`wan_umt5_to_transformers` (:mod:`headforcing.io.umt5_wan`: the shape, the
  key map and the file), plus the ``google/umt5-xxl`` tokenizer folder;
- the diffusers repository layout (``Wan2.1-T2V-1.3B-Diffusers``): ``text_encoder/`` and
  ``tokenizer/`` in the Hugging Face format.

Encoding follows Self-Forcing (and Wan): prompts are whitespace-cleaned, tokenized with ``</s>``
and padded to ``text_len``; the encoder sees the attention mask; every position past a prompt's
tokens is set to zero. transformers is imported where used so ``import headforcing`` stays light.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from headforcing.io.safe_load import check_diffusers_folder, first_line
from headforcing.io.umt5_wan import (  # re-exported: the encoder's shape and Wan's file
    UMT5_XXL,
    WAN_FORMAT,
    UMT5Shape,
    load_wan_state_dict,
    umt5_dtype,
    umt5_from_wan_state_dict,
    wan_umt5_to_transformers,
)

__all__ = [
    "UMT5_XXL",
    "WAN_FORMAT",
    "UMT5Shape",
    "UMT5TextEncoder",
    "clean_prompt",
    "load_wan_state_dict",
    "umt5_dtype",
    "umt5_from_wan_state_dict",
    "wan_umt5_to_transformers",
]

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, UMT5EncoderModel

_WHITESPACE = re.compile(r"\s+")


def clean_prompt(prompt: str) -> str:
    """Wan's ``clean='whitespace'`` prompt cleaning, without its ftfy mojibake repair.

    HTML entities are unescaped twice, runs of whitespace become one space, the ends are stripped.
    """
    return _WHITESPACE.sub(" ", html.unescape(html.unescape(prompt))).strip()


def _from_pretrained_dtype_kwarg() -> str:
    """transformers renamed ``torch_dtype`` to ``dtype`` in 4.56 and warns on the old name."""
    import transformers
    from packaging.version import Version

    return "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"


class UMT5TextEncoder:
    """umT5 prompt encoder: ``list[str]`` -> ``[B, text_len, text_dim]`` float32, padding zeroed.

    Build it with :meth:`from_wan_files` or :meth:`from_diffusers`; the constructor takes an
    already loaded model and tokenizer.

    Parameters
    ----------
    model
        A transformers ``UMT5EncoderModel``; it is put in eval mode and frozen.
    tokenizer
        Its tokenizer (``google/umt5-xxl``); it must pad on the right.
    text_len
        Tokens per prompt after padding or truncation (512 in Wan2.1 and Self-Forcing).
    keep_loaded
        If False, :meth:`release` runs after every :meth:`encode`, so the weights are gone once
        the prompts are encoded; the next :meth:`encode` (a prompt switch) reads them again
        with ``reload``.
    reload
        Builds the encoder again after a release (the loaders pass one that re-reads the
        memory-mapped file); ``None``: an encode after a release raises.
    """

    def __init__(
        self,
        model: UMT5EncoderModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        text_len: int = 512,
        keep_loaded: bool = True,
        reload: Callable[[], UMT5EncoderModel] | None = None,
    ) -> None:
        if text_len < 1:
            raise ValueError(f"text_len must be >= 1, got {text_len}")
        if getattr(tokenizer, "padding_side", "right") != "right":
            raise ValueError(
                f"the tokenizer pads on the {tokenizer.padding_side!r}; the encoder zeroes the "
                "positions past each prompt, so it needs padding_side='right'"
            )
        vocab_size = model.config.vocab_size
        if len(tokenizer) > vocab_size:
            raise ValueError(
                f"the tokenizer has {len(tokenizer)} tokens but the encoder's embedding only "
                f"{vocab_size} rows: the tokenizer folder does not belong to this checkpoint "
                "(Wan2.1 expects the google/umt5-xxl tokenizer)"
            )
        self.text_len = text_len
        self.text_dim: int = model.config.d_model
        self.keep_loaded = keep_loaded
        self._model: UMT5EncoderModel | None = model.eval().requires_grad_(False)
        self._device = next(model.parameters()).device
        self._reload = reload
        self._tokenizer = tokenizer

    @classmethod
    def from_wan_files(
        cls,
        checkpoint: str | Path,
        tokenizer_dir: str | Path,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.bfloat16,
        text_len: int = 512,
        shape: UMT5Shape | None = None,
        keep_loaded: bool = True,
    ) -> UMT5TextEncoder:
        """Load Wan2.1's ``models_t5_umt5-xxl-enc-bf16.pth`` and the ``google/umt5-xxl`` tokenizer.

        Parameters
        ----------
        checkpoint
            The Wan-layout state dict file (read with ``weights_only=True``, memory-mapped).
        tokenizer_dir
            Folder with the Hugging Face tokenizer files (Wan2.1 ships it as ``google/umt5-xxl/``).
        device, dtype
            Where and in what precision the encoder runs. ``device="cpu"`` keeps it off the GPU
            that runs the transformer; the file is bfloat16.
        text_len
            Tokens per prompt (512 for Wan2.1).
        shape
            Encoder sizes; read from the tensor shapes when ``None``. :data:`UMT5_XXL` is Wan's.
        keep_loaded
            See the class docstring.
        """
        from transformers import AutoTokenizer

        tokenizer_dir = Path(tokenizer_dir)
        if not tokenizer_dir.is_dir():
            raise FileNotFoundError(
                f"tokenizer folder {tokenizer_dir} does not exist; expected the google/umt5-xxl "
                "tokenizer files (tokenizer.json or spiece.model, tokenizer_config.json), which "
                "Wan2.1-T2V-1.3B ships in its google/umt5-xxl/ folder"
            )

        def load() -> UMT5EncoderModel:
            state_dict = load_wan_state_dict(checkpoint)
            model = umt5_from_wan_state_dict(state_dict, shape, source=str(checkpoint))
            return model.to(device=device, dtype=dtype)

        model = load()
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        return cls(model, tokenizer, text_len=text_len, keep_loaded=keep_loaded, reload=load)

    @classmethod
    def from_diffusers(
        cls,
        root: str | Path,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.bfloat16,
        text_len: int = 512,
        keep_loaded: bool = True,
    ) -> UMT5TextEncoder:
        """Load ``root/text_encoder`` and ``root/tokenizer`` of a diffusers Wan2.1 repository.

        Parameters
        ----------
        root
            A local copy of e.g. ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers`` (nothing is downloaded).
        device, dtype, text_len, keep_loaded
            As in :meth:`from_wan_files`.
        """
        from transformers import AutoTokenizer, UMT5EncoderModel

        root = Path(root)
        expected = {
            "text_encoder": "config.json and the UMT5EncoderModel weights",
            "tokenizer": "the google/umt5-xxl tokenizer files",
        }
        for folder, contents in expected.items():
            if not (root / folder).is_dir():
                raise FileNotFoundError(
                    f"{root / folder} does not exist; expected a diffusers Wan2.1 folder with "
                    f"{folder}/ holding {contents}. For Wan's own files "
                    "(models_t5_umt5-xxl-enc-bf16.pth) use UMT5TextEncoder.from_wan_files."
                )
        expected_weights = "the UMT5EncoderModel weights as .safetensors"
        check_diffusers_folder(root / "text_encoder", expected_weights)

        def load() -> UMT5EncoderModel:
            return UMT5EncoderModel.from_pretrained(
                root / "text_encoder",
                local_files_only=True,
                use_safetensors=True,
                **{_from_pretrained_dtype_kwarg(): dtype},
            ).to(device)

        try:
            model = load()
            tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer", local_files_only=True)
        except (OSError, ValueError, RuntimeError) as error:
            raise ValueError(
                f"{root}: the text encoder does not load ({first_line(error)}); expected "
                f"text_encoder/ with {expected_weights} and tokenizer/ (docs/real-models.md)"
            ) from None
        return cls(model, tokenizer, text_len=text_len, keep_loaded=keep_loaded, reload=load)

    @property
    def device(self) -> torch.device:
        """The device the encoder runs on (and its outputs live on)."""
        return self._device

    @property
    def loaded(self) -> bool:
        """Whether the weights are in memory now."""
        return self._model is not None

    def _loaded_model(self) -> UMT5EncoderModel:
        if self._model is None:
            if self._reload is None:
                raise RuntimeError(
                    "this UMT5TextEncoder was released; build a new one to encode more prompts "
                    "(or pass keep_loaded=True and encode all prompts before release())"
                )
            self._model = self._reload().eval().requires_grad_(False)
        return self._model

    def count_tokens(self, prompt: str) -> int:
        """Tokens of ``prompt`` as :meth:`encode` reads it, ``</s>`` included."""
        return len(self._tokenizer(clean_prompt(prompt), add_special_tokens=True)["input_ids"])

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Encode prompts; positions past each prompt's tokens (``</s>`` included) are zero.

        Parameters
        ----------
        prompts
            B prompt strings. Longer prompts are cut to ``text_len`` tokens (``</s>`` kept).

        Returns
        -------
        torch.Tensor
            ``[B, text_len, text_dim]`` float32 on :attr:`device`; an ordinary tensor (not an
            inference tensor), so callers may modify it in place.
        """
        if isinstance(prompts, str) or not prompts:
            raise ValueError(
                f"encode takes a non-empty list of prompt strings, got {prompts!r}; "
                "wrap a single prompt as [prompt]"
            )
        model = self._loaded_model()
        device = self.device
        tokens = self._tokenizer(
            [clean_prompt(prompt) for prompt in prompts],
            padding="max_length",
            max_length=self.text_len,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        input_ids = tokens["input_ids"].to(device)  # [B, text_len]
        attention_mask = tokens["attention_mask"].to(device)  # [B, text_len]
        with torch.inference_mode():
            # hidden: [B, text_len, text_dim]
            hidden = model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        lengths = attention_mask.sum(dim=1)  # [B]
        positions = torch.arange(self.text_len, device=device)  # [text_len]
        padding = positions[None, :] >= lengths[:, None]  # [B, text_len]
        # Out-of-place, outside inference mode: an ordinary float32 tensor comes back.
        embeddings = hidden.float().masked_fill(padding[..., None], 0.0)
        if not self.keep_loaded:
            self.release()
        return embeddings

    def release(self) -> None:
        """Free the encoder's weights (idempotent); :meth:`encode` reads them again with
        ``reload``, or raises without one."""
        model, self._model = self._model, None
        if model is None:
            return
        device = next(model.parameters()).device
        # Moving to meta drops the storage even where someone else still holds the module.
        model.to("meta")
        if device.type == "cuda":
            torch.cuda.empty_cache()
