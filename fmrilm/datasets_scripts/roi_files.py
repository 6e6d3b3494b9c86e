"""Reading one ROI time-series matrix from a file: .npy, .csv, .tsv, .mat (v5 and v7.3), .h5/.hdf5.

Each reader returns the 2-D matrix as stored (no transposition, no dtype change beyond parsing);
orientation and validation are the builder's business. :func:`probe_roi_matrix_shape` gives the
stored shape while reading as little as possible (headers and metadata only, except for text
files, whose rows must be counted), so a builder can infer the number of ROIs before loading.

Every problem with a file raises :class:`~fmrilm.datasets_scripts.schema.ScanSkipped` whose
message says what is wrong and, where it helps, which option fixes it. The third-party parsers
(numpy, pandas, scipy.io, h5py) raise many exception types for damaged files (struct errors,
MatReadError, IndexError ...), so their calls catch ``Exception``: one damaged file among thousands
must be reported and skipped, never end the build.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .schema import ScanSkipped

__all__ = ["SUPPORTED_SUFFIXES", "probe_roi_matrix_shape", "read_roi_matrix"]

#: File suffixes the ROI-folder builder reads (lower case).
SUPPORTED_SUFFIXES: tuple[str, ...] = (".npy", ".csv", ".tsv", ".mat", ".h5", ".hdf5")

_MATLAB_NUMERIC_CLASSES = {"double", "single", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"}


def read_roi_matrix(path: Path, *, mat_variable: str | None = None, h5_key: str | None = None) -> np.ndarray:
    """The 2-D matrix stored in ``path`` (rank and orientation are checked by the caller).

    Args:
        path: a file with one of :data:`SUPPORTED_SUFFIXES`.
        mat_variable: variable of a .mat file; default: its only 2-D numeric variable.
        h5_key: dataset of an HDF5 file; default: its only 2-D numeric dataset.

    Raises:
        ScanSkipped: unreadable file, or no / several candidate matrices.
    """
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return _read_npy(path, mmap=False)
    if suffix in (".csv", ".tsv"):
        return _read_text_table(path)
    if suffix == ".mat":
        return _read_mat(path, mat_variable)
    if suffix in (".h5", ".hdf5"):
        return _read_hdf5(path, h5_key, matlab=False)
    raise ScanSkipped(f"unsupported file type {suffix!r} (supported: {', '.join(SUPPORTED_SUFFIXES)})")


def probe_roi_matrix_shape(
    path: Path, *, mat_variable: str | None = None, h5_key: str | None = None
) -> tuple[int, ...]:
    """The stored shape of the matrix :func:`read_roi_matrix` would return, read cheaply."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return tuple(_read_npy(path, mmap=True).shape)
    if suffix in (".csv", ".tsv"):
        return _text_table_shape(path)
    if suffix == ".mat":
        return _mat_shape(path, mat_variable)
    if suffix in (".h5", ".hdf5"):
        return tuple(_hdf5_shape(path, h5_key, matlab=False))
    raise ScanSkipped(f"unsupported file type {suffix!r} (supported: {', '.join(SUPPORTED_SUFFIXES)})")


# --- .npy -----------------------------------------------------------------------------------------


def _read_npy(path: Path, mmap: bool) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception as error:  # damaged file: see the module docstring
        raise ScanSkipped(f"unreadable .npy file ({error})") from error


# --- .csv / .tsv ------------------------------------------------------------------------------------


def _delimiter(path: Path) -> str:
    return "\t" if path.suffix.lower() == ".tsv" else ","


def _first_row(path: Path) -> tuple[list[str], bool]:
    """The first non-empty line split into fields, and whether it is a header (not all numbers)."""
    try:
        with open(path, encoding="utf-8") as handle:
            line = next((line for line in handle if line.strip()), None)
    except (OSError, UnicodeDecodeError) as error:
        raise ScanSkipped(f"unreadable text file ({error})") from error
    if line is None:
        raise ScanSkipped("empty file")
    fields = line.rstrip("\r\n").split(_delimiter(path))
    try:
        [float(value) for value in fields]
    except ValueError:
        return fields, True
    return fields, False


def _text_table_shape(path: Path) -> tuple[int, int]:
    fields, is_header = _first_row(path)
    try:
        with open(path, "rb") as handle:
            n_lines = sum(1 for line in handle if line.strip())
    except OSError as error:
        raise ScanSkipped(f"unreadable text file ({error})") from error
    return (n_lines - int(is_header), len(fields))


def _read_text_table(path: Path) -> np.ndarray:
    import pandas as pd

    _, is_header = _first_row(path)
    try:
        frame = pd.read_csv(path, sep=_delimiter(path), header=0 if is_header else None, skip_blank_lines=True)
    except Exception as error:  # damaged file: see the module docstring
        raise ScanSkipped(f"unreadable {path.suffix} table ({error})") from error
    if frame.empty:
        raise ScanSkipped("has a header line but no data rows")
    non_numeric = [str(name) for name, dtype in frame.dtypes.items() if not pd.api.types.is_numeric_dtype(dtype)]
    if non_numeric:
        shown = ", ".join(non_numeric[:5]) + (" ..." if len(non_numeric) > 5 else "")
        raise ScanSkipped(
            f"non-numeric values in column(s) {shown}; a table must hold only numbers (plus one optional header line)"
        )
    return frame.to_numpy()


# --- .mat (MATLAB v5 via scipy; v7.3 is HDF5) ----------------------------------------------------


def _mat_candidates(path: Path) -> list[tuple[str, tuple[int, ...], str]]:
    from scipy.io import whosmat

    try:
        return whosmat(path)
    except NotImplementedError:  # MATLAB v7.3: an HDF5 file
        raise
    except Exception as error:  # damaged file: see the module docstring
        raise ScanSkipped(f"unreadable .mat file ({error})") from error


def _choose_mat_variable(path: Path, variables: list[tuple[str, tuple[int, ...], str]], requested: str | None) -> str:
    names = [name for name, _, _ in variables]
    if requested is not None:
        if requested not in names:
            raise ScanSkipped(f"has no variable {requested!r} (it has {names}); check --mat-variable")
        return requested
    matrices = [
        name for name, shape, cls in variables if len(shape) == 2 and cls in _MATLAB_NUMERIC_CLASSES and min(shape) > 1
    ]
    if len(matrices) == 1:
        return matrices[0]
    if not matrices:
        raise ScanSkipped(f"has no 2-D numeric variable (variables: {names})")
    raise ScanSkipped(f"has several 2-D numeric variables {matrices}: choose one with --mat-variable")


def _mat_shape(path: Path, mat_variable: str | None) -> tuple[int, ...]:
    try:
        variables = _mat_candidates(path)
    except NotImplementedError:
        return tuple(_hdf5_shape(path, mat_variable, matlab=True))
    name = _choose_mat_variable(path, variables, mat_variable)
    return next(tuple(shape) for var, shape, _ in variables if var == name)


def _read_mat(path: Path, mat_variable: str | None) -> np.ndarray:
    from scipy.io import loadmat

    try:
        variables = _mat_candidates(path)
    except NotImplementedError:
        return _read_hdf5(path, mat_variable, matlab=True)
    name = _choose_mat_variable(path, variables, mat_variable)
    try:
        return np.asarray(loadmat(path, variable_names=[name])[name])
    except Exception as error:  # damaged file: see the module docstring
        raise ScanSkipped(f"unreadable .mat variable {name!r} ({error})") from error


# --- HDF5 (and MATLAB v7.3) ----------------------------------------------------------------------


def _hdf5_dataset(handle, path: Path, key: str | None, matlab: bool):
    import h5py

    option = "--mat-variable" if matlab else "--h5-key"
    if key is not None:
        item = handle.get(key)
        if not isinstance(item, h5py.Dataset):
            raise ScanSkipped(f"has no dataset {key!r}; check {option}")
        return item
    candidates = []

    def visit(name: str, item) -> None:
        if name.startswith("#") or not isinstance(item, h5py.Dataset):  # MATLAB's #refs# group
            return
        if item.ndim == 2 and item.dtype.kind in "fiu" and min(item.shape) > 1:
            candidates.append(name)

    handle.visititems(visit)
    if len(candidates) == 1:
        return handle[candidates[0]]
    if not candidates:
        raise ScanSkipped("has no 2-D numeric dataset")
    hint = " (this looks like an fMRI-LM HDF5 file: use the fmrilm_hdf5 builder)" if "time_series" in handle else ""
    shown = ", ".join(candidates[:5]) + (" ..." if len(candidates) > 5 else "")
    raise ScanSkipped(f"has several 2-D numeric datasets ({shown}): choose one with {option}{hint}")


def _open_hdf5(path: Path):
    import h5py

    try:
        return h5py.File(path, "r")
    except Exception as error:  # damaged file: see the module docstring
        raise ScanSkipped(f"unreadable HDF5 file ({error})") from error


def _hdf5_shape(path: Path, key: str | None, matlab: bool) -> tuple[int, ...]:
    with _open_hdf5(path) as handle:
        shape = _hdf5_dataset(handle, path, key, matlab).shape
    # MATLAB writes column-major arrays, so h5py sees them transposed.
    return tuple(reversed(shape)) if matlab else tuple(shape)


def _read_hdf5(path: Path, key: str | None, matlab: bool) -> np.ndarray:
    with _open_hdf5(path) as handle:
        dataset = _hdf5_dataset(handle, path, key, matlab)
        try:
            array = dataset[()]
        except Exception as error:  # damaged file: see the module docstring
            raise ScanSkipped(f"unreadable HDF5 dataset {dataset.name!r} ({error})") from error
    return np.asarray(array).T if matlab else np.asarray(array)
