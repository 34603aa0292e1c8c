"""The MONAI Label app's own code (MONAI Label puts the app folder on ``sys.path`` and imports ``lib`` from it)."""
