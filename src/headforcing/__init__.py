"""headforcing: minute-long autoregressive video diffusion with a KV cache per head type."""

__version__ = "0.1.0"
