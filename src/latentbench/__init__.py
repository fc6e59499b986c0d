"""latentbench: a research harness for image autoencoders and latent diffusion."""

__version__ = "0.1.0"
