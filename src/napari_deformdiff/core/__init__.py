"""Qt-free core (torch + numpy): IO with geometry, spatial operations, the three generators
(ddm, drdm, modiff: nets, generate, train, evaluate, weights each), shared network blocks (nn),
weights files and registry, phantoms and deformation inspection. Imports neither napari nor Qt;
every long-running function is a generator of core.events."""
