"""The closed sets of values options take: one tuple each, with no heavy imports.

The CLI (config.py) builds its `choices` and its validation from these, so `--help` stays fast;
the modules that act on a value (model, training, losses, imaging, prediction) should import
the tuple from here rather than type it again.
"""

# model
BACKBONES = ("densenet121", "densenet169", "densenet201", "resnet50", "mobilenetv2", "xception", "efficientnetb0")
TASKS = ("multilabel", "multiclass", "binary")
HEADS = ("gap", "csra", "mldecoder")  # --head: how each multi-label head pools its feature map
ENGINES = ("local", "beam")  # generate_dataset.py and detect.py --list: --engine
TASK_CHOICES = ("auto", *TASKS)  # --task: auto = the dataset's task
BN_MODES = ("auto", "frozen", "train")

# optimisation
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("onecycle", "cosine", "plateau", "constant")

# imbalance
HEAD_WEIGHTS = ("none", "original", "inverse", "sqrt", "effective")
POS_WEIGHTS = ("auto", "none")
LOSSES = ("bce", "focal", "asl")
CLASS_WEIGHTS = ("none", "inverse", "sqrt")

# hardware
MIXED_PRECISION = ("auto", "on", "off", "bfloat16", "float16")
BACKENDS = ("auto", "tensorflow", "jax")

# images (generate_dataset.py --resize)
RESIZE_MODES = ("crop", "stretch", "keep")

# evaluate.py --export
EXPORT_FORMATS = ("savedmodel", "tflite", "onnx", "trunk")
