import pytest
import torch

from headforcing.model import WanConfig, WanModel

# Test tensors are tiny: one thread avoids thread start-up and contention costs that dominate.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield


@pytest.fixture
def small_config() -> WanConfig:
    """Two layers, four heads of 16 channels: RoPE bands 8/4/4."""
    return WanConfig(
        dim=64, ffn_dim=96, freq_dim=32, text_dim=24, text_len=10, num_heads=4, num_layers=2
    )


def random_model(config: WanConfig, seed: int = 0) -> WanModel:
    """A model whose every parameter (biases, norms, modulation) is random and non-trivial."""
    torch.manual_seed(seed)
    model = WanModel(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1 + 0.2 * torch.randn_like(param))
            else:
                param.copy_(torch.randn_like(param) / max(param.shape[-1], 1) ** 0.5)
    return model.eval()
