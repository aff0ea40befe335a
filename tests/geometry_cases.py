"""Geometry test cases shared by the test modules: oblique images and a hand-written ACDC folder."""

import nibabel as nib
import numpy as np


def rotation(ax, ay, az):
    """A proper rotation from three angles in degrees (x, then y, then z)."""
    a = np.radians([ax, ay, az])
    rx = np.array([[1, 0, 0], [0, np.cos(a[0]), -np.sin(a[0])], [0, np.sin(a[0]), np.cos(a[0])]])
    ry = np.array([[np.cos(a[1]), 0, np.sin(a[1])], [0, 1, 0], [-np.sin(a[1]), 0, np.cos(a[1])]])
    rz = np.array([[np.cos(a[2]), -np.sin(a[2]), 0], [np.sin(a[2]), np.cos(a[2]), 0], [0, 0, 1]])
    return rz @ ry @ rx


OBLIQUE = rotation(25, -12, 40)  # ITK (x,y,z) direction of an oblique short-axis stack


def itk_oblique_image(shape_zyx=(6, 9, 11), pixel=np.float32, dim4=0):
    import SimpleITK as sitk  # here, so that the GPU tests run where SimpleITK is not installed

    rng = np.random.default_rng(0)
    arr = rng.normal(100, 20, ((dim4,) if dim4 else ()) + shape_zyx).astype(pixel)
    img = sitk.GetImageFromArray(arr, isVector=False)
    n = 4 if dim4 else 3
    spacing, origin = (1.4, 1.6, 8.0), (-120.5, 33.25, 71.0)
    d = np.eye(n)
    d[:3, :3] = OBLIQUE
    img.SetSpacing(spacing + ((0.035,) if dim4 else ()))
    img.SetOrigin(origin + ((0.0,) if dim4 else ()))
    img.SetDirection(tuple(d.ravel()))
    return img, arr


def write_acdc_by_hand(folder, nb=6, ed=1, es=4):
    """An ACDC-style patient written with nibabel only: (x, y, z, t) cine and (x, y, z) frames."""
    folder.mkdir()
    rng = np.random.default_rng(6)
    cine = rng.random((10, 12, 3, nb)).astype(np.float32)
    affine = np.diag([1.4, 1.4, 9.0, 1.0])
    affine[:3, 3] = [-7.0, 8.0, 9.0]
    (folder / "Info.cfg").write_text(f"ED: {ed}\nES: {es}\nGroup: DCM\nHeight: 180.0\nNbFrame: {nb}\nWeight: 80.0\n")
    nib.save(nib.Nifti1Image(cine, affine), str(folder / f"{folder.name}_4d.nii.gz"))
    gts = {}
    for f in (ed, es):
        nib.save(nib.Nifti1Image(cine[..., f - 1], affine), str(folder / f"{folder.name}_frame{f:02d}.nii.gz"))
        gt = np.zeros((10, 12, 3), np.uint8)
        gt[2:6, 3:8, :] = 2
        gt[3:5, 4:7, :] = 3
        gt[7:9, 3:8, 1] = 1 + (f == es)
        nib.save(nib.Nifti1Image(gt, affine), str(folder / f"{folder.name}_frame{f:02d}_gt.nii.gz"))
        gts[f] = gt
    return cine, gts
