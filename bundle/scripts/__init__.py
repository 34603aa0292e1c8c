"""Custom components of the bundle: what MONAI lacks for this model, imported by the configs as ``scripts.*``."""
