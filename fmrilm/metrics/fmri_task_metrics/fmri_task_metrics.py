"""fMRI-LM task metrics as an ``evaluate`` module: the numbers ``fmrilm evaluate`` reports.

Load it offline from its path (no Hub):

    import evaluate
    from fmrilm.metrics import FMRI_TASK_METRICS
    classification = evaluate.load(str(FMRI_TASK_METRICS))                 # or config "classification"
    classification.compute(references=[0, 1], predictions=[[0.8, 0.2], [0.3, 0.7]])
    regression = evaluate.load(str(FMRI_TASK_METRICS), "regression")
    regression.compute(references=[31.0, 45.0, 60.0], predictions=[30.0, 50.0, 58.0])

The computations are :func:`fmrilm.evaluation.classification_metrics` and
:func:`fmrilm.evaluation.regression_metrics` (one implementation for the library and this module).
"""

import datasets
import evaluate

from fmrilm.evaluation import classification_metrics, regression_metrics

_DESCRIPTION = """
Classification ("classification", default): class probabilities per example (the softmax of the
candidate answers' log-likelihoods) against class ids; returns accuracy, balanced_accuracy,
macro_f1 (of the argmax) and auroc (binary: AUROC of P(class 1); more classes: one-vs-rest macro
over the classes present in the references; NaN with a warning for a single class).
Regression ("regression"): predicted values against true values; returns mae and pearson_r
(NaN with a warning for constant values).
"""

_INPUTS = """
Args:
    predictions: classification: list of per-class probability lists (each row sums to 1);
        regression: list of floats.
    references: classification: list of class ids (ints in [0, n_classes)); regression: floats.
Returns:
    dict of floats (see the description).
"""

_CITATION = """
@article{fmrilm2025,
  title   = {fMRI-LM: Towards a Universal Foundation Model for Language-Aligned fMRI Understanding},
  journal = {arXiv preprint arXiv:2511.21760},
  year    = {2025}
}
"""

_CONFIGS = ("classification", "regression")


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _INPUTS)
class FmriTaskMetrics(evaluate.Metric):
    """Accuracy, balanced accuracy, AUROC, macro-F1 (classification) or MAE, Pearson r (regression)."""

    def _info(self):
        name = self.config_name if self.config_name != "default" else "classification"
        if name not in _CONFIGS:
            raise ValueError(f"Unknown configuration {self.config_name!r}; choose one of {_CONFIGS}.")
        if name == "classification":
            features = datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float64")), "references": datasets.Value("int64")}
            )
        else:
            features = datasets.Features(
                {"predictions": datasets.Value("float64"), "references": datasets.Value("float64")}
            )
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_INPUTS,
            features=features,
        )

    def _compute(self, predictions, references):
        name = self.config_name if self.config_name != "default" else "classification"
        if name == "classification":
            results = classification_metrics(references, predictions)
        else:
            results = regression_metrics(references, predictions)
        return {key: value for key, value in results.items() if key != "n"}
