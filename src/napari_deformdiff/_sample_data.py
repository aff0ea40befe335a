"""File > Open Sample: procedurally generated, seeded phantoms (no files needed)."""

from __future__ import annotations

from ._layers import attach_field, volume_to_layer_data


def _sample(kind: str, *, two_d: bool = False) -> list[tuple]:
    from .core.phantom import cardiac_phantom, lung_phantom
    from .core.phantom.dataset import case_volumes

    make = cardiac_phantom if kind == "cardiac" else lung_phantom
    case = make(0, two_d=two_d)
    name = f"{kind} phantom" + (" 2D" if two_d else "")
    image, labels = case_volumes(case, name)
    image_data = volume_to_layer_data(image)
    attach_field(image_data[1]["metadata"], case.fields)  # the true motion, for the overlays
    return [image_data, volume_to_layer_data(labels, opacity=0.4)]


def cardiac() -> list[tuple]:
    return _sample("cardiac")


def cardiac_2d() -> list[tuple]:
    return _sample("cardiac", two_d=True)


def lung() -> list[tuple]:
    return _sample("lung")
