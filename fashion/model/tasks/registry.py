"""The task classes by name: `get_task(name, labels)` gives the object training, evaluation, prediction
and the model ask; `resolve_task` reads `--task auto` from the manifest."""

from __future__ import annotations

from collections.abc import Sequence

from fashion.config.choices import TASKS
from fashion.core.errors import TrainError
from fashion.data.dataset_json import DatasetManifest
from fashion.model.tasks.base import Task
from fashion.model.tasks.binary import Binary
from fashion.model.tasks.multiclass import MultiClass
from fashion.model.tasks.multilabel import MultiLabel

REGISTRY: dict[str, type[Task]] = {t.name: t for t in (MultiLabel, MultiClass, Binary)}
assert tuple(REGISTRY) == TASKS, "choices.TASKS and the task classes must name the same tasks"


def get_task(name: str, labels: Sequence[str] = (), heads: Sequence[str] | None = None) -> Task:
    """The task `name` over `labels` (`heads`: the model's output names when known, e.g. from meta.json)."""
    if name not in REGISTRY:
        raise ValueError(f"--task must be one of {TASKS}, got {name!r}")
    return REGISTRY[name](labels, heads)


def resolve_task(spec: str, manifest: DatasetManifest, train) -> str:
    """`--task auto` = the manifest's task (absent: multilabel); checks the dataset fits the task."""
    name = manifest.get("task", "multilabel") if spec == "auto" else spec
    if name not in REGISTRY:
        raise TrainError(f"--task must be auto or one of {TASKS}, got {name!r}")
    get_task(name, manifest["labels"]).check_dataset(train)
    return name
