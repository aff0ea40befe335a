"""DDM (with DiffuseMorph): frames between a source and a target by scaling a diffusion latent code."""
