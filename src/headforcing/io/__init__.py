"""Input and output: checkpoints, text encoders, latent decoders and video files."""
