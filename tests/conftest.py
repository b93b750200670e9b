import pytest
import torch

from headforcing.model import WanConfig
from headforcing.testing import random_model  # noqa: F401 (the tests' random model)

# Test tensors are tiny: one thread avoids thread start-up and contention costs that dominate.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic(tmp_path_factory, monkeypatch):
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True, warn_only=True)
    # stored head maps go to a fresh folder, never to the user's cache
    monkeypatch.setenv("HEADFORCING_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    yield


@pytest.fixture
def small_config() -> WanConfig:
    """Two layers, four heads of 16 channels: RoPE bands 8/4/4."""
    return WanConfig(
        dim=64, ffn_dim=96, freq_dim=32, text_dim=24, text_len=10, num_heads=4, num_layers=2
    )


def random_head_map(config: WanConfig, seed: int = 0, preset: str = "test"):
    """Every layer gets each head type at least once (when it has 3+ heads), in random order."""
    from headforcing.heads import HEAD_TYPES, HeadMap

    generator = torch.Generator().manual_seed(seed)
    labels = []
    for _ in range(config.num_layers):
        row = [HEAD_TYPES[i % 3] for i in range(config.num_heads)]
        order = torch.randperm(config.num_heads, generator=generator).tolist()
        labels.append(tuple(row[i] for i in order))
    return HeadMap(preset=preset, labels=tuple(labels))


@pytest.fixture(autouse=True)
def _grad_probe(request):
    """No test leaves autograd switched off: a library generator that held inference mode
    across a yield once did, when two streams were interleaved."""
    yield
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled(), request.node.nodeid
