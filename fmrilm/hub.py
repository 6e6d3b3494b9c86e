"""Publishing fMRI-LM models, LoRA adapters, stage-1 processors and datasets to the Hugging Face Hub.

    fmrilm push model     DIR --repo-id me/fmri-lm          [--private] [--token T] [--results FILE] [--base-model ID]
    fmrilm push adapter   DIR --repo-id me/fmri-lm-lora --base-model me/fmri-lm
    fmrilm push processor DIR --repo-id me/fmri-tokenizer
    fmrilm push dataset   DIR --repo-id me/fmri-data

Every push is **one commit**: the folder's files, a generated ``README.md`` card and the deletion of files an
earlier version left behind go up together (``HfApi.create_commit``; LFS objects are uploaded before the commit
and are invisible until it lands). A refused token, a server error or a lost connection therefore leaves the
repository as it was, never half-published. Folders are checked before anything is sent; offline mode
(``HF_HUB_OFFLINE=1``) is refused before any network call. The endpoint and token come from the usual
``HF_ENDPOINT`` / ``HF_TOKEN`` / ``hf auth login`` settings unless ``token`` is given.

Cards are rendered from the Jinja templates in ``fmrilm/model_cards/`` with ``huggingface_hub.ModelCardData``
metadata: ``library_name``, tags ``fmri-lm`` and ``fmri``, ``pipeline_tag: fmri-to-text``, licence, base model,
datasets, ``model-index`` results (from ``--results``), the arXiv 2511.21760 citation and the preprocessing a
user must match (atlas, ROI order, TR, crop, normalisation, patch size), read from the processor's feature
extractor.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "CITATION",
    "HubPublishError",
    "PushResult",
    "adapter_card",
    "add_push_command",
    "check_adapter_folder",
    "check_model_folder",
    "check_processor_folder",
    "load_results",
    "model_card",
    "preprocessing_summary",
    "processor_card",
    "push_adapter",
    "push_dataset",
    "push_model",
    "push_processor",
]

CITATION = """@misc{fmrilm2025,
  title         = {fMRI-LM: Towards a Universal Foundation Model for Language-Aligned fMRI Understanding},
  year          = {2025},
  eprint        = {2511.21760},
  archivePrefix = {arXiv},
  url           = {https://arxiv.org/abs/2511.21760}
}"""

TEMPLATES = Path(__file__).parent / "model_cards"
CARD_FILE = "README.md"
PIPELINE_TAG = "fmri-to-text"
BASE_TAGS = ("fmri-lm", "fmri")
LICENSE = "apache-2.0"
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
ADAPTER_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
#: Never uploaded: version control, caches, training state that is not part of a published model.
IGNORED_PARTS = (".git", ".cache", "__pycache__", ".ipynb_checkpoints")
_REPO_ID_RE = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]*/)?[A-Za-z0-9][A-Za-z0-9._-]*$")


class HubPublishError(RuntimeError):
    """Publishing failed; the message names the cause and the fix. The repository was left unchanged."""


@dataclass(frozen=True)
class PushResult:
    """What a push published.

    Attributes:
        repo_id: the repository.
        repo_type: ``"model"`` or ``"dataset"``.
        commit_url: URL of the single commit.
        commit_oid: its id (a 40-hex SHA-1).
        files: paths uploaded in that commit, sorted (the card included).
        deleted: paths of an earlier version that the commit removed, sorted.
    """

    repo_id: str
    repo_type: str
    commit_url: str
    commit_oid: str
    files: tuple[str, ...]
    deleted: tuple[str, ...] = ()


# ---- folder checks ---------------------------------------------------------------------------------


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} ({what}) is not valid JSON ({error}); re-save the folder.") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path} ({what}) must hold a JSON object, got {type(data).__name__}.")
    return data


def _require_folder(folder: str | Path, what: str) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder; give the {what} folder written by save_pretrained.")
    return folder


def _check_weights(folder: Path, names: Sequence[str], what: str, fix: str) -> None:
    present = [name for name in names if (folder / name).is_file()]
    if not present:
        raise FileNotFoundError(f"{folder} has no {what} weights (expected one of {', '.join(names)}); {fix}")
    for index in (name for name in present if name.endswith(".index.json")):
        shards = set(_read_json(folder / index, "weight index").get("weight_map", {}).values())
        missing = sorted(shard for shard in shards if not (folder / shard).is_file())
        if not shards or missing:
            raise FileNotFoundError(
                f"{folder / index} lists weight shards that are missing ({', '.join(missing) or 'none listed'}); "
                "copy every shard into the folder or save the model again."
            )


def check_processor_folder(folder: str | Path) -> dict[str, Any]:
    """Check a saved :class:`~fmrilm.FmriLMProcessor` folder; return its ``processor_config.json``.

    Requires ``processor_config.json`` with a ``feature_extractor`` and the stage-1 fMRI tokenizer in its subfolder
    (``config.json`` + weights).

    Raises:
        FileNotFoundError: a required file is missing (the message lists it).
        ValueError: a file is not what an fmri-lm processor writes.
    """
    folder = _require_folder(folder, "processor")
    config_path = folder / "processor_config.json"
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{folder} has no processor_config.json; save the processor with FmriLMProcessor.save_pretrained(folder) "
            "(fmrilm train tokenizer writes one)."
        )
    config = _read_json(config_path, "processor config")
    if not isinstance(config.get("feature_extractor"), dict):
        raise ValueError(f"{config_path} has no feature_extractor settings; it was not written by FmriLMProcessor.")
    subfolder = (config.get("fmri_tokenizer") or {}).get("subfolder", "fmri_tokenizer")
    tokenizer_folder = folder / subfolder
    if not (tokenizer_folder / "config.json").is_file():
        raise FileNotFoundError(
            f"{folder} has no fMRI tokenizer ({subfolder}/config.json is missing); the processor must be saved with its "
            "stage-1 fmri_tokenizer."
        )
    _check_weights(
        tokenizer_folder, WEIGHT_FILES, "fMRI tokenizer", "save the processor again with its fmri_tokenizer."
    )
    return config


def check_model_folder(folder: str | Path) -> dict[str, Any]:
    """Check a saved fMRI-LM model folder (model + processor); return its ``config.json``.

    Requires ``config.json`` of model type ``fmri_lm``, the weights (single file or complete shards), a processor
    (see :func:`check_processor_folder`) and the language model's text tokenizer.
    """
    folder = _require_folder(folder, "model")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json; save the model with model.save_pretrained(folder).")
    config = _read_json(folder / "config.json", "model config")
    if config.get("model_type") != "fmri_lm":
        raise ValueError(
            f"{folder / 'config.json'} has model_type {config.get('model_type')!r}, expected 'fmri_lm'; push an "
            "FmriLMForCausalLM folder (fmrilm train align/instruct write one under <output_dir>/model)."
        )
    _check_weights(folder, WEIGHT_FILES, "model", "save the model with model.save_pretrained(folder).")
    check_processor_folder(folder)
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"{folder} has no text tokenizer ({' or '.join(TOKENIZER_FILES)}); save the processor with its tokenizer "
            "into the model folder: processor.save_pretrained(folder)."
        )
    return config


def check_adapter_folder(folder: str | Path) -> dict[str, Any]:
    """Check a saved PEFT adapter folder; return its ``adapter_config.json``."""
    folder = _require_folder(folder, "adapter")
    if not (folder / "adapter_config.json").is_file():
        raise FileNotFoundError(
            f"{folder} has no adapter_config.json; save the adapter with peft_model.save_pretrained(folder) "
            "(fmrilm train ... lora.enabled=true writes one under <output_dir>/adapter)."
        )
    config = _read_json(folder / "adapter_config.json", "adapter config")
    if "peft_type" not in config:
        raise ValueError(f"{folder / 'adapter_config.json'} has no peft_type; it was not written by PEFT.")
    _check_weights(folder, ADAPTER_WEIGHT_FILES, "adapter", "save the adapter with peft_model.save_pretrained(folder).")
    return config


def check_repo_id(repo_id: str, what: str = "repo_id") -> str:
    """``repo_id`` if it is a Hub repository id (``name`` or ``namespace/name``), never a local path."""
    if not isinstance(repo_id, str) or not repo_id:
        raise ValueError(f"{what} must be a Hub repository id such as 'me/fmri-lm', got {repo_id!r}.")
    looks_local = repo_id.startswith(("/", ".", "~", "\\")) or Path(repo_id).expanduser().exists() or "\\" in repo_id
    if looks_local or not _REPO_ID_RE.match(repo_id) or "--" in repo_id or ".." in repo_id:
        raise ValueError(
            f"{what} {repo_id!r} is not a Hub repository id; give 'namespace/name' (e.g. 'me/fmri-lm'), not a local "
            "path: a published card or adapter must point to something others can download."
        )
    return repo_id


# ---- card content ----------------------------------------------------------------------------------


def preprocessing_summary(processor_config: Mapping[str, Any]) -> dict[str, Any]:
    """The preprocessing a user must match, from a ``processor_config.json`` (its ``feature_extractor``)."""
    fe = processor_config["feature_extractor"]
    n_rois, patch, length, tr = (
        int(fe["n_rois"]),
        int(fe["patch_size"]),
        int(fe["max_timepoints"]),
        float(fe["target_tr"]),
    )
    names = fe.get("roi_names") or []
    cohort = None
    if fe.get("normalization") == "cohort" and fe.get("cohort_median") is not None:
        cohort = f"cohort median {fe['cohort_median']:.6g}, IQR {fe['cohort_iqr']:.6g}"
    return {
        "atlas": fe.get("atlas") or "not recorded (set FmriFeatureExtractor(atlas=...) before publishing)",
        "n_rois": n_rois,
        "roi_names": ", ".join(map(str, names[:5])) + (" ..." if len(names) > 5 else ""),
        "target_tr": tr,
        "max_timepoints": length,
        "window_seconds": f"{length * tr:g}",
        "crop_strategy": fe.get("crop_strategy", "start"),
        "normalization": fe.get("normalization", "robust_roi"),
        "cohort": cohort,
        "patch_size": patch,
        "n_time_patches": length // patch,
        "n_tokens": (length // patch) * n_rois,
        "anti_alias": bool(fe.get("anti_alias", True)),
        "nan_policy": fe.get("nan_policy", "raise"),
    }


@dataclass(frozen=True)
class _ResultRow:
    task: str
    dataset: str
    split: str
    setting: str
    metric: str
    value: float
    std: float | None

    @property
    def value_text(self) -> str:
        return f"{self.value:.4g}" + ("" if self.std is None else f" +- {self.std:.2g}")


def _number(value: Any, where: str) -> tuple[float, float | None]:
    if isinstance(value, Mapping):
        if "mean" not in value:
            raise ValueError(f"{where}: a metric given as an object needs 'mean' (and optionally 'std'), got {value}.")
        mean, std = _number(value["mean"], where)[0], value.get("std", value.get("sd"))
        return mean, None if std is None else _number(std, where)[0]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where}: metric values must be finite numbers, got {value!r}.")
    return float(value), None


def load_results(path: str | Path) -> list[_ResultRow]:
    """Read an evaluation results JSON for the card's ``model-index``.

    Accepted: ``{"results": [row, ...]}`` or a bare list of rows, where a row is
    ``{"task": str, "dataset": str, "split": str = "test", "setting": str = "", "metric": str, "value": number}``
    or, for several metrics, ``{..., "metrics": {name: number | {"mean": m, "std": s}}}`` (``setting``
    describes e.g. ``"0-shot, 3 seeds"``). The JSON that ``fmrilm evaluate --out`` writes (one
    :func:`fmrilm.evaluation.evaluate_task` result) is accepted as well (:func:`evaluation_rows`).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the content does not follow this format (the message names the row and the field).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Results file {path} does not exist; give the JSON written by the evaluation.")
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, Mapping) and "rows" in data and "splits" in data:  # `fmrilm evaluate --out` output
        data = evaluation_rows(data, dataset=str(data.get("dataset") or path.stem))
    rows = data.get("results") if isinstance(data, Mapping) else data
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"{path} must hold a non-empty list of results (a list, or {{'results': [...]}}).")
    parsed = []
    for index, row in enumerate(rows):
        where = f"{path} result {index}"
        if (
            not isinstance(row, Mapping)
            or not isinstance(row.get("task"), str)
            or not isinstance(row.get("dataset"), str)
        ):
            raise ValueError(f"{where} needs string fields 'task' and 'dataset', got {row!r}.")
        metrics = row.get("metrics")
        if metrics is None:
            if not isinstance(row.get("metric"), str) or "value" not in row:
                raise ValueError(f"{where} needs 'metric' and 'value' (or a 'metrics' object).")
            metrics = {row["metric"]: row["value"] if "std" not in row else {"mean": row["value"], "std": row["std"]}}
        if not isinstance(metrics, Mapping) or not metrics:
            raise ValueError(f"{where}: 'metrics' must be a non-empty object of name -> value.")
        for metric, value in metrics.items():
            mean, std = _number(value, f"{where} metric {metric!r}")
            parsed.append(_ResultRow(row["task"], row["dataset"], str(row.get("split", "test")),
                                     str(row.get("setting", "")), str(metric), mean, std))  # fmt: skip
    return parsed


def evaluation_rows(results: Mapping[str, Any], *, dataset: str) -> list[dict[str, Any]]:
    """Rows of this module's results format from one :func:`fmrilm.evaluation.evaluate_task` result
    (what ``fmrilm evaluate --out`` writes): one row per method and k, metrics as mean and SD."""
    rows = []
    for row in results["rows"]:
        metrics = {
            name: {"mean": entry["mean"], "std": entry.get("sd")}
            for name, entry in row["metrics"].items()
            if entry.get("mean") is not None
        }
        if not metrics:
            continue
        seeds = len(row.get("seeds") or []) or 1
        rows.append({
            "task": results["task"], "dataset": dataset, "split": results["splits"]["scored"],
            "setting": f"{row['name']}, {row['shots']}-shot, {seeds} seed{'s' if seeds > 1 else ''}", "metrics": metrics,
        })  # fmt: skip
    return rows


def _eval_results(rows: Sequence[_ResultRow]):
    from huggingface_hub import EvalResult

    return [
        EvalResult(
            task_type=PIPELINE_TAG, task_name=f"{row.task} ({row.setting})" if row.setting else row.task,
            dataset_type=row.dataset, dataset_name=row.dataset, dataset_split=row.split,
            metric_type=row.metric, metric_value=row.value,
            metric_name=row.metric + (f" (+- {row.std:.2g} SD)" if row.std is not None else ""),
        )
        for row in rows
    ]  # fmt: skip


def _render(template: str, card_data, **context: Any):
    import jinja2
    from huggingface_hub import ModelCard

    from . import __version__

    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), keep_trailing_newline=True)
    text = environment.get_template(template).render(
        card_data=card_data.to_yaml(), version=__version__, citation=CITATION, **context
    )
    return ModelCard(re.sub(r"\n{3,}", "\n\n", text))


def _datasets_list(datasets: Sequence[str] | None) -> list[str] | None:
    return [check_repo_id(name, "dataset") for name in datasets] if datasets else None


def model_card(
    model_dir: str | Path,
    repo_id: str,
    *,
    base_model: str | None = None,
    datasets: Sequence[str] | None = None,
    results: str | Path | None = None,
):
    """The ``README.md`` card (a ``huggingface_hub.ModelCard``) of a model folder to be published as ``repo_id``."""
    from huggingface_hub import ModelCardData

    check_repo_id(repo_id)
    preprocessing = preprocessing_summary(_read_json(Path(model_dir) / "processor_config.json", "processor config"))
    rows = load_results(results) if results is not None else []
    title = repo_id.split("/")[-1]
    card_data = ModelCardData(
        library_name="transformers", pipeline_tag=PIPELINE_TAG, license=LICENSE, tags=list(BASE_TAGS),
        base_model=check_repo_id(base_model, "base_model") if base_model else None, datasets=_datasets_list(datasets),
        model_name=title, eval_results=_eval_results(rows) or None,
    )  # fmt: skip
    return _render("model.md", card_data, title=title, repo_id=repo_id, base_model=base_model,
                   datasets=datasets or [], results=rows, preprocessing=preprocessing)  # fmt: skip


def adapter_card(
    adapter_dir: str | Path,
    repo_id: str,
    base_model_repo_id: str,
    *,
    datasets: Sequence[str] | None = None,
    results: str | Path | None = None,
    processor_config: Mapping[str, Any] | None = None,
    endpoint: str | None = None,
):
    """The card of a PEFT adapter for ``base_model_repo_id`` (``processor_config`` adds the preprocessing)."""
    from huggingface_hub import ModelCardData, constants

    check_repo_id(repo_id)
    check_repo_id(base_model_repo_id, "base_model_repo_id")
    rows = load_results(results) if results is not None else []
    title = repo_id.split("/")[-1]
    card_data = ModelCardData(
        library_name="peft", pipeline_tag=PIPELINE_TAG, license=LICENSE, tags=[*BASE_TAGS, "lora", "peft"],
        base_model=base_model_repo_id, datasets=_datasets_list(datasets), model_name=title,
        eval_results=_eval_results(rows) or None,
    )  # fmt: skip
    preprocessing = preprocessing_summary(processor_config) if processor_config else None
    return _render("adapter.md", card_data, title=title, repo_id=repo_id, base_model=base_model_repo_id,
                   base_model_url=f"{endpoint or constants.ENDPOINT}/{base_model_repo_id}", results=rows,
                   preprocessing=preprocessing)  # fmt: skip


def processor_card(processor_dir: str | Path, repo_id: str, *, datasets: Sequence[str] | None = None):
    """The card of a stage-1 processor (fMRI tokenizer) folder."""
    from huggingface_hub import ModelCardData

    check_repo_id(repo_id)
    folder = Path(processor_dir)
    config = _read_json(folder / "processor_config.json", "processor config")
    subfolder = (config.get("fmri_tokenizer") or {}).get("subfolder", "fmri_tokenizer")
    tokenizer_config = _read_json(folder / subfolder / "config.json", "fMRI tokenizer config")
    title = repo_id.split("/")[-1]
    card_data = ModelCardData(
        library_name="transformers", license=LICENSE, tags=[*BASE_TAGS, "fmri-tokenizer", "vq"],
        datasets=_datasets_list(datasets), model_name=title,
    )  # fmt: skip
    return _render("processor.md", card_data, title=title, repo_id=repo_id, preprocessing=preprocessing_summary(config),
                   num_codes=tokenizer_config.get("num_codes", "?"),
                   codebook_dim=tokenizer_config.get("codebook_dim", "?"))  # fmt: skip


# ---- uploading -------------------------------------------------------------------------------------


def _folder_files(folder: Path) -> list[str]:
    """Posix paths (relative to ``folder``) of the files to publish: all but hidden/cache files and the old card."""
    files = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if not path.is_file() or relative.as_posix() == CARD_FILE:
            continue
        if any(part in IGNORED_PARTS or part.startswith(".") for part in relative.parts):
            continue
        files.append(relative.as_posix())
    return files


@contextmanager
def _explained_hub_errors(action: str, repo_id: str, endpoint: str) -> Iterator[None]:
    """Turn ``huggingface_hub``/network errors into :class:`HubPublishError` naming the cause and the fix."""
    try:  # huggingface_hub 2.x speaks httpx2, 1.x httpx
        import httpx2 as http_client
    except ImportError:  # pragma: no cover  (depends on the installed huggingface_hub)
        import httpx as http_client
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError

    unchanged = f"Nothing was published: the upload is a single commit, so {repo_id} is unchanged."
    try:
        yield
    except OfflineModeIsEnabled as error:
        raise HubPublishError(_offline_message(action)) from error
    except RepositoryNotFoundError as error:
        raise HubPublishError(
            f"The Hub at {endpoint} does not know the repository {repo_id} (or hides it from this token) while "
            f"{action}. {unchanged} Check the repository id and that your token can write to its namespace."
        ) from error
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status == 401:
            cause = f"the Hub at {endpoint} refused the token (401 Unauthorized)"
            fix = ("Log in with `hf auth login`, set HF_TOKEN, or pass --token with a valid token that has write "
                   "access.")  # fmt: skip
        elif status == 403:
            cause = f"the token may not write to {repo_id} (403 Forbidden)"
            fix = "Use a token with write access to that namespace, or publish under your own namespace."
        elif status is not None and status >= 500:
            cause = f"the Hub at {endpoint} failed with a server error ({status})"
            fix = "This is not a problem with your files; try again later."
        else:
            cause = f"the Hub at {endpoint} answered {status}: {error}"
            fix = "Check the repository id and the folder."
        raise HubPublishError(f"Publishing failed while {action}: {cause}. {unchanged} {fix}") from error
    except (http_client.TransportError, ConnectionError) as error:
        raise HubPublishError(
            f"Could not reach the Hub at {endpoint} while {action} ({type(error).__name__}: {error}). {unchanged} "
            "Check your network connection and HF_ENDPOINT."
        ) from error


def _offline_message(action: str) -> str:
    return (
        f"Cannot publish while {action}: huggingface_hub is in offline mode (HF_HUB_OFFLINE=1). Nothing was sent. "
        "Unset HF_HUB_OFFLINE (or set HF_HUB_OFFLINE=0) in the environment of this command to publish."
    )


def _require_online(action: str) -> None:
    from huggingface_hub import constants

    if constants.is_offline_mode():
        raise HubPublishError(_offline_message(action))


def _commit_folder(
    folder: Path,
    repo_id: str,
    what: str,
    card: Any,
    *,
    replacements: Mapping[str, bytes] | None = None,
    token: str | None,
    private: bool | None,
    commit_message: str,
) -> PushResult:
    """Publish the ``what`` (``"model"``) in ``folder``, its ``card`` (``str(card)``) as the README.

    Refuses in offline mode (nothing sent); else creates ``repo_id`` if needed, then ONE commit: the
    folder's files (``replacements``: new contents by path), the card, and deletions of stale files.
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    _require_online(f"pushing the {what}")
    card_text = str(card)
    api = HfApi(token=token)
    files = _folder_files(folder)
    with _explained_hub_errors("creating the repository", repo_id, api.endpoint):
        api.create_repo(repo_id, repo_type="model", exist_ok=True, private=private)
    with _explained_hub_errors("listing the repository", repo_id, api.endpoint):
        remote = set(api.list_repo_files(repo_id, repo_type="model"))
    replacements = dict(replacements or {})
    operations: list[Any] = [
        CommitOperationAdd(path_in_repo=path, path_or_fileobj=replacements.pop(path, None) or str(folder / path))
        for path in files
    ]
    operations.append(CommitOperationAdd(path_in_repo=CARD_FILE, path_or_fileobj=card_text.encode("utf-8")))
    published = {*files, CARD_FILE}
    stale = sorted(remote - published - {".gitattributes"})
    operations += [CommitOperationDelete(path_in_repo=path) for path in stale]
    with _explained_hub_errors("uploading the files", repo_id, api.endpoint):
        commit = api.create_commit(repo_id, operations=operations, repo_type="model", commit_message=commit_message)
    return PushResult(repo_id, "model", str(commit.commit_url), str(commit.oid), tuple(sorted(published)), tuple(stale))


def push_model(
    model_dir: str | Path,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    results: str | Path | None = None,
    base_model: str | None = None,
    datasets: Sequence[str] | None = None,
    commit_message: str = "Upload fMRI-LM model with fmri-lm",
) -> PushResult:
    """Publish a saved fMRI-LM model folder (model, processor, tokenizer, remote code) with a generated card.

    Args:
        model_dir: folder with ``config.json`` (model type ``fmri_lm``), weights and the processor files.
        repo_id: ``namespace/name`` on the Hub (created if missing).
        private: create the repository private (ignored if it exists).
        token: Hub token; default: ``HF_TOKEN`` or the saved login.
        results: evaluation results JSON (see :func:`load_results`) for the card's ``model-index``.
        base_model: Hub id of the language model the model was built on, for the card.
        datasets: Hub ids of the training datasets, for the card.
        commit_message: message of the single commit.

    Raises:
        FileNotFoundError / ValueError: the folder is incomplete or the ids are not Hub ids (nothing is sent).
        HubPublishError: offline mode, a refused token, a server or network error (the repository is unchanged).
    """
    folder = Path(model_dir)
    check_repo_id(repo_id)
    check_model_folder(folder)
    card = model_card(folder, repo_id, base_model=base_model, datasets=datasets, results=results)
    return _commit_folder(folder, repo_id, "model", card, token=token, private=private, commit_message=commit_message)


def push_adapter(
    adapter_dir: str | Path,
    repo_id: str,
    base_model_repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    results: str | Path | None = None,
    datasets: Sequence[str] | None = None,
    processor_dir: str | Path | None = None,
    commit_message: str = "Upload fMRI-LM LoRA adapter with fmri-lm",
) -> PushResult:
    """Publish a PEFT adapter folder; its ``adapter_config.json`` is rewritten to name ``base_model_repo_id``.

    ``base_model_name_or_path`` in the uploaded config becomes ``base_model_repo_id`` (a Hub id, never a local
    path: a local path in a published adapter cannot be resolved by anyone else), so
    ``PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), repo_id)`` and
    ``AutoPeftModelForCausalLM.from_pretrained(repo_id)`` find the base by id. The local folder is not modified.
    ``processor_dir`` (default: the adapter folder itself when it holds a processor) adds the preprocessing to the
    card.

    Raises:
        ValueError: ``base_model_repo_id`` or ``repo_id`` is not a Hub id (e.g. a local path); a bad folder.
        FileNotFoundError: the folder has no ``adapter_config.json`` or adapter weights.
        HubPublishError: offline mode, a refused token, a server or network error (the repository is unchanged).
    """
    folder = Path(adapter_dir)
    check_repo_id(repo_id)
    check_repo_id(base_model_repo_id, "base_model_repo_id")
    config = check_adapter_folder(folder)
    processor_config = None
    source = Path(processor_dir) if processor_dir is not None else folder
    if processor_dir is not None or (folder / "processor_config.json").is_file():
        processor_config = check_processor_folder(source)
    config["base_model_name_or_path"] = base_model_repo_id
    rewritten = (json.dumps(config, indent=2, sort_keys=True) + "\n").encode("utf-8")
    from huggingface_hub import constants

    card = adapter_card(folder, repo_id, base_model_repo_id, datasets=datasets, results=results,
                        processor_config=processor_config, endpoint=constants.ENDPOINT)  # fmt: skip
    return _commit_folder(folder, repo_id, "adapter", card, replacements={"adapter_config.json": rewritten},
                          token=token, private=private, commit_message=commit_message)  # fmt: skip


def push_processor(
    processor_dir: str | Path,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    datasets: Sequence[str] | None = None,
    commit_message: str = "Upload fMRI-LM processor (stage-1 fMRI tokenizer) with fmri-lm",
) -> PushResult:
    """Publish a saved stage-1 processor folder (feature extractor + fMRI tokenizer [+ text tokenizer])."""
    folder = Path(processor_dir)
    check_repo_id(repo_id)
    check_processor_folder(folder)
    card = processor_card(folder, repo_id, datasets=datasets)
    return _commit_folder(folder, repo_id, "processor", card, token=token, private=private,
                          commit_message=commit_message)  # fmt: skip


def push_dataset(
    dataset_dir: str | Path,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload fMRI dataset with fmri-lm",
) -> PushResult:
    """Publish a dataset folder written by ``fmrilm dataset build`` / ``describe`` / ``tokenize`` as one commit.

    The folder's own card (written with the data: YAML ``configs`` and ``dataset_info`` that make
    ``load_dataset(repo_id)`` restore ``bold`` as ``Array2D``, provenance, licence and terms) is published as is;
    Parquet shards of an earlier upload are replaced. Uses
    :func:`fmrilm.datasets_scripts.writer.push_dataset_folder`.

    Raises:
        FileNotFoundError: no README.md or no ``data/*.parquet``.
        ValueError: the README has no ``configs`` metadata (``load_dataset`` could not read the upload).
        HubPublishError: offline mode, a refused token, a server or network error (the repository is unchanged).
    """
    from huggingface_hub import DatasetCard, HfApi

    from .datasets_scripts.writer import BUILD_INFO_FILE, DATA_FOLDER, push_dataset_folder
    from .datasets_scripts.writer import CARD_FILE as DATASET_CARD

    folder = _require_folder(dataset_dir, "dataset")
    check_repo_id(repo_id)
    if not (folder / DATASET_CARD).is_file() or not any((folder / DATA_FOLDER).glob("*.parquet")):
        raise FileNotFoundError(
            f"{folder} does not hold a written dataset ({DATASET_CARD} and {DATA_FOLDER}/*.parquet are required); run "
            "`fmrilm dataset build ... --out DIR` first."
        )
    card = DatasetCard.load(folder / DATASET_CARD)
    if not card.data.to_dict().get("configs"):
        raise ValueError(
            f"{folder / DATASET_CARD} has no `configs` metadata, so load_dataset('{repo_id}') could not find the data; "
            "rebuild the folder with fmrilm dataset build (or write it with fmrilm.datasets_scripts.write_dataset)."
        )
    _require_online("pushing the dataset")
    endpoint = HfApi(token=token).endpoint
    with _explained_hub_errors("uploading the dataset", repo_id, endpoint):
        url = push_dataset_folder(folder, repo_id, token=token, private=private, commit_message=commit_message)
    oid = url.rstrip("/").rsplit("/", 1)[-1]
    uploaded = [folder / DATASET_CARD, folder / BUILD_INFO_FILE, *(folder / DATA_FOLDER).glob("*.parquet")]
    files = sorted(path.relative_to(folder).as_posix() for path in uploaded if path.is_file())
    return PushResult(repo_id, "dataset", url, oid, tuple(files))


# ---- command line ----------------------------------------------------------------------------------


def _run_push(args: argparse.Namespace) -> int:
    common = dict(private=args.private or None, token=args.token)
    try:
        if args.kind == "model":
            result = push_model(args.folder, args.repo_id, results=args.results, base_model=args.base_model,
                                datasets=args.datasets, **common)  # fmt: skip
        elif args.kind == "adapter":
            if not args.base_model:
                raise ValueError("fmrilm push adapter needs --base-model REPO_ID: the Hub id of the model it adapts.")
            result = push_adapter(args.folder, args.repo_id, args.base_model, results=args.results,
                                  datasets=args.datasets, processor_dir=args.processor, **common)  # fmt: skip
        elif args.kind == "processor":
            result = push_processor(args.folder, args.repo_id, datasets=args.datasets, **common)
        else:
            result = push_dataset(args.folder, args.repo_id, **common)
    except (ValueError, FileNotFoundError, HubPublishError) as error:
        print(f"fmrilm push {args.kind}: error: {error}", file=sys.stderr)
        return 2 if isinstance(error, (ValueError, FileNotFoundError)) else 1
    print(f"Published {len(result.files)} file(s) to {result.repo_type} repository {result.repo_id} in one commit: "
          f"{result.commit_url}")  # fmt: skip
    if result.deleted:
        print(f"Removed {len(result.deleted)} file(s) of the previous version: {', '.join(result.deleted)}")
    return 0


def add_push_command(subparsers) -> argparse.ArgumentParser:
    """Add ``push {model,adapter,processor,dataset} DIR --repo-id ID ...`` to the ``fmrilm`` sub-parsers."""
    push = subparsers.add_parser(
        "push", help="publish a model, LoRA adapter, processor or dataset folder to the Hugging Face Hub (one commit)",
        description="Publish a folder to the Hub in a single commit, with a generated card. Uses HF_ENDPOINT and "
        "HF_TOKEN (or `hf auth login`) unless --token is given.",
    )  # fmt: skip
    push.add_argument("kind", choices=("model", "adapter", "processor", "dataset"), help="what the folder holds")
    push.add_argument("folder", type=Path, metavar="DIR", help="the folder written by save_pretrained / the builders")
    push.add_argument("--repo-id", required=True, help="target repository, namespace/name (created if missing)")
    push.add_argument("--private", action="store_true", help="create the repository private")
    push.add_argument(
        "--token", default=None, help="Hub token with write access (default: HF_TOKEN or the saved login)"
    )
    push.add_argument(
        "--results", type=Path, default=None, help="evaluation results JSON for the card (model, adapter)"
    )
    push.add_argument("--base-model", default=None,
                      help="Hub id of the base: the model an adapter applies to (required for adapter), or the "
                           "language model a model was built on")  # fmt: skip
    push.add_argument("--datasets", nargs="+", default=None, metavar="ID", help="Hub ids of the training datasets")
    push.add_argument("--processor", type=Path, default=None,
                      help="adapter only: processor folder whose preprocessing the card states")  # fmt: skip
    push.set_defaults(handler=_run_push)
    return push
