"""Parcellation speed: fmrilm.nifti.parcellate vs nilearn's NiftiLabelsMasker on the same inputs.

Input: a synthetic 4-D image on the 3 mm MNI grid (61 x 73 x 61, float32, 200 volumes; 60 with
--quick), brain voxels = the AAL2 atlas dilated by two voxels, holding regional slow signals plus
voxel noise around 1000. Atlas: the real AAL2 label image (2 mm, from the sample-data cache), so
both implementations resample it to the 3 mm grid. Both get the same in-memory image and the same
atlas file, and the outputs are checked to agree before anything is timed.

Cases: plain averaging, and detrend + standardize (nilearn ``standardize="zscore_sample"``), each
with our resampling cache cleared before every call ("cold": what a single run costs); plus plain
averaging with the cache kept ("warm": every further run of a dataset on the same grid).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BenchResult, best_time, machine_description

MNI_3MM_AFFINE = np.array([[-3.0, 0, 0, 90], [0, 3.0, 0, -126], [0, 0, 3.0, -72], [0, 0, 0, 1]])
MNI_3MM_SHAPE = (61, 73, 61)


def synthetic_image(atlas_path: Path, n_volumes: int, seed: int = 0):
    """A Nifti1Image on the 3 mm MNI grid: per-region random walks + voxel noise, baseline 1000."""
    import nibabel as nib
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    atlas = nib.load(atlas_path)
    to_atlas = np.linalg.inv(atlas.affine) @ MNI_3MM_AFFINE
    labels = ndimage.affine_transform(
        np.asarray(atlas.dataobj, dtype=np.int32), np.diag(to_atlas[:3, :3]), offset=to_atlas[:3, 3],
        output_shape=MNI_3MM_SHAPE, order=0,
    )  # fmt: skip
    brain = ndimage.binary_dilation(labels > 0, iterations=2)
    inside = np.flatnonzero(brain.ravel(order="F"))
    _, region = np.unique(labels.ravel(order="F")[inside], return_inverse=True)  # dilation rim = its own "region"
    regional = rng.standard_normal((region.max() + 1, n_volumes)).cumsum(axis=1).astype(np.float32)
    data = np.zeros((*MNI_3MM_SHAPE, n_volumes), dtype=np.float32, order="F")
    flat = data.reshape(-1, n_volumes, order="F")  # a view: voxels in the image's (Fortran) order
    flat[inside] = 1000.0 + regional[region] + 10.0 * rng.standard_normal((len(inside), n_volumes), dtype=np.float32)
    image = nib.Nifti1Image(data, MNI_3MM_AFFINE)
    image.header.set_xyzt_units("mm", "sec")
    image.header["pixdim"][4] = 2.0
    return image


def run(quick: bool = False) -> list[BenchResult]:
    from nilearn.maskers import NiftiLabelsMasker

    from fmrilm.atlases import aal2
    from fmrilm.nifti import clear_parcellation_cache, parcellate
    from fmrilm.sample_data import aal2_atlas_files

    atlas_path, _ = aal2_atlas_files(download=False)
    n_volumes = 60 if quick else 200
    repeats = 2 if quick else 3
    image = synthetic_image(atlas_path, n_volumes)
    spec = aal2(120)  # all labels of the image, as NiftiLabelsMasker extracts them (same sorted order)

    def nilearn_call(**options):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return NiftiLabelsMasker(str(atlas_path), **options).fit_transform(image)

    def ours_call(cold: bool, **options):
        if cold:
            clear_parcellation_cache()
        return parcellate(image, atlas_path, spec, **options).time_series

    cases = [
        ("plain mean, cold cache", True, {}, {}),
        ("detrend+standardize, cold cache", True, {"detrend": True, "standardize": True},
         {"detrend": True, "standardize": "zscore_sample"}),
        ("plain mean, warm cache", False, {}, {}),
    ]  # fmt: skip
    shape = f"{MNI_3MM_SHAPE[0]}x{MNI_3MM_SHAPE[1]}x{MNI_3MM_SHAPE[2]}x{n_volumes}"
    results = []
    for case, cold, ours_options, nilearn_options in cases:
        ours_signals, reference = ours_call(cold, **ours_options), nilearn_call(**nilearn_options)
        if not np.allclose(ours_signals, reference, rtol=1e-5, atol=1e-4):
            raise AssertionError(f"{case}: parcellate and NiftiLabelsMasker disagree; timing would be meaningless.")
        ours_seconds = best_time(lambda c=cold, o=ours_options: ours_call(c, **o), repeats=repeats)
        nilearn_seconds = best_time(lambda o=nilearn_options: nilearn_call(**o), repeats=repeats)
        results.append(
            BenchResult(
                benchmark="parcellation",
                case=case,
                ours="fmrilm.nifti.parcellate",
                baseline="nilearn NiftiLabelsMasker.fit_transform",
                ours_seconds=ours_seconds,
                baseline_seconds=nilearn_seconds,
                target=">= 1x",
                target_ratio=1.0,
                notes=f"{shape} float32 in memory, real AAL2 2 mm atlas resampled to 3 mm, 120 regions",
            )
        )
    return results


if __name__ == "__main__":
    print(machine_description())
    for result in run(quick="--quick" in sys.argv):
        print(result.line())
