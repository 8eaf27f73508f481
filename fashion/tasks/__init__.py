"""The three tasks a dataset and a bundle can have (README, "Single-label and binary tasks").

| task       | heads                          | scored by                                    |
|------------|--------------------------------|----------------------------------------------|
| multilabel | `head_<label>` sigmoid each    | mAP, sample-F2 at per-class tuned thresholds |
| multiclass | `head_softmax` over K classes  | accuracy, top-k accuracy, macro-F1           |
| binary     | `head_sigmoid`, positive class | ROC-AUC, F1 at a tuned threshold             |

`get_task(name, labels)` gives the object that training, evaluation, prediction and the model ask
(`base.Task` lists what it answers).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..choices import TASKS
from ..errors import TrainError
from .base import HEAD_PREFIX, Task, Validation, Weights, head_names, slug, top_k_for
from .binary import Binary, binary_classes
from .multiclass import MultiClass
from .multilabel import HEAD_FILTERS, MultiLabel
from .single import SingleLabel

REGISTRY: dict[str, type[Task]] = {t.name: t for t in (MultiLabel, MultiClass, Binary)}
assert tuple(REGISTRY) == TASKS, "choices.TASKS and the task classes must name the same tasks"

__all__ = [
    "TASKS",
    "REGISTRY",
    "HEAD_PREFIX",
    "HEAD_FILTERS",
    "Task",
    "MultiLabel",
    "SingleLabel",
    "MultiClass",
    "Binary",
    "Weights",
    "Validation",
    "get_task",
    "resolve_task",
    "head_names",
    "slug",
    "top_k_for",
    "binary_classes",
]


def get_task(name: str, labels: Sequence[str] = (), heads: Sequence[str] | None = None) -> Task:
    """The task `name` over `labels` (`heads`: the model's output names when known, e.g. from meta.json)."""
    if name not in REGISTRY:
        raise ValueError(f"--task must be one of {TASKS}, got {name!r}")
    return REGISTRY[name](labels, heads)


def resolve_task(spec: str, manifest: dict, train) -> str:
    """`--task auto` = the manifest's task (absent: multilabel); checks the dataset fits the task."""
    name = manifest.get("task", "multilabel") if spec == "auto" else spec
    if name not in REGISTRY:
        raise TrainError(f"--task must be auto or one of {TASKS}, got {name!r}")
    get_task(name, manifest["labels"]).check_dataset(train)
    return name
