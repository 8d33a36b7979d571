"""sidrec: generative recommendation with learnable semantic IDs."""

__version__ = "0.1.0"
