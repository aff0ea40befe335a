"""napari-deformdiff: deformation-based diffusion models for anatomical motion.

Nothing heavy is imported here: napari imports this package to build its menus.
"""

__version__ = "0.1.0"
