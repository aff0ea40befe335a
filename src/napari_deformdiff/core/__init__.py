"""Qt-free core: spatial operations, phantoms, IO, device choice. Imports neither napari nor Qt."""
