"""difflab: diffusion models, verified."""
