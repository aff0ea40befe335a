"""DRDM (Zheng et al.): random multi-scale deformation diffusion and its learned recovery."""
