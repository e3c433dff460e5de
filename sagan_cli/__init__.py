"""sagan: train, sample and evaluate Self-Attention GANs from the command line."""

__version__ = "0.2.0"
