"""`train.py`'s options."""

from __future__ import annotations

from dataclasses import dataclass

from fashion.config import choices as C
from fashion.config.base import DEFAULT_RECORDS, _Config
from fashion.config.options import check_choices, opt
from fashion.core.errors import TrainError

RUN, MODEL, TRAINS, OPTIM, IMBALANCE, AUG, HW, MACHINES = (
    "data and run",
    "model",
    "what trains",
    "optimisation",
    "imbalance",
    "augmentation",
    "hardware",
    "several machines",
)


@dataclass
class TrainConfig(_Config):
    """Everything `train.py` needs."""

    data: str = opt(DEFAULT_RECORDS, "dataset folder (dataset.json + shards)", group=RUN, metavar="DIR")
    verify_data: bool = opt(
        False,
        "before training, also check every shard's sha256 against dataset.json (reads every byte, ~1 GB/s); "
        "without it each shard's presence and size are checked, and a record damaged inside is named when read",
        group=RUN,
    )
    run: str | None = opt(
        None, "run name: model_save/RUN and log/RUN (default: a timestamp)", group=RUN, metavar="NAME"
    )
    resume: bool = opt(False, "continue run --run where it stopped (stage, epoch, optimiser state)", group=RUN)
    model_save: str = opt("model_save", "where bundles go", group=RUN, metavar="DIR")
    log: str = opt("log", "where logs go", group=RUN, metavar="DIR")
    seed: int = opt(0, "random seed", group=RUN)
    task: str = opt(
        "auto",
        "auto = the dataset's task (dataset.json; multilabel when absent); multilabel = one "
        "sigmoid head per class; multiclass = one softmax over the classes (one label per image); "
        "binary = one sigmoid head: on a 2-class dataset the positive class is the SECOND label",
        group=MODEL,
        choices=C.TASK_CHOICES,
        expected=f"auto or one of {C.TASKS}",
    )
    backbone: str = opt(
        "densenet121",
        "trunk from keras.applications, with its own preprocessing inside the model",
        group=MODEL,
        choices=C.BACKBONES,
    )
    alpha: float = opt(
        1.0, "MobileNetV2 width multiplier (ImageNet weights: 0.35, 0.5, 0.75, 1.0, 1.3, 1.4)", group=MODEL, metavar="A"
    )
    weights: str = opt(
        "imagenet",
        "imagenet (Keras' notop file from model_save/ or Keras' cache), none, a .h5 "
        "file (Keras' notop file, or a trunk from evaluate.py --export trunk such as the shipped "
        "data/pretrained/densenet121-clothing.weights.h5), or an earlier bundle folder (reuse its trunk)",
        group=MODEL,
        metavar="W",
    )
    image_size: int = opt(224, "input side in pixels (random crops of the stored images)", group=MODEL, metavar="PX")
    head_dropout: float = opt(0.0, "dropout before each head's Dense", group=MODEL, metavar="P")
    head: str = opt(
        "gap",
        "how each multi-label head pools: gap (average, then Dense 1: the original design) or csra "
        "(class-specific residual attention: the average plus --csra-lambda x an attention-weighted score) "
        "or mldecoder (one learned query per label attending to the feature map, shared by the labels)",
        group=MODEL,
        choices=C.HEADS,
    )
    csra_lambda: float = opt(0.1, "--head csra: weight of the attention term", group=MODEL, metavar="L")
    csra_temperature: float = opt(
        1.0, "--head csra: softmax temperature over the locations (99: max pooling)", group=MODEL, metavar="T"
    )
    epochs: int = opt(4, "epochs when --stages is not given", group=TRAINS, metavar="N")
    layers: str = opt(
        "all",
        "heads (trunk frozen), all, a stage onwards (densenet/resnet50: conv5+, conv4+, "
        "conv3+; mobilenetv2: block_16+, block_13+, block_10+, block_6+; xception: block14+, "
        "block13+, block5+; efficientnetb0: block7+ ... block3+), or a regex over trunk layer names",
        group=TRAINS,
        metavar="GROUP",
    )
    stages: str | None = opt(
        None, "staged recipe GROUP:EPOCHS[:LR],... e.g. heads:5,all:20:1e-4", group=TRAINS, metavar="SPEC"
    )
    bn: str = opt(
        "auto",
        "trunk BatchNorm: frozen (inference mode), train, auto (train from scratch, frozen when pretrained)",
        group=TRAINS,
        choices=C.BN_MODES,
    )
    optimizer: str = opt("adam", "sgd = momentum 0.9 + clipnorm 5 (the original)", group=OPTIM, choices=C.OPTIMIZERS)
    lr: float = opt(2e-3, "peak learning rate", group=OPTIM)
    lr_mult: float = opt(
        1.0,
        "discriminative rates: the trunk steps at this multiple of the heads' rate (e.g. "
        "0.1 when fine-tuning a pretrained trunk; 1 = one rate for all)",
        group=OPTIM,
        metavar="M",
    )
    schedule: str = opt("onecycle", "learning-rate schedule per stage", group=OPTIM, choices=C.SCHEDULES)
    warmup: float = opt(
        0.1, "warm-up share of the steps (cosine; one-cycle uses at least 0.25)", group=OPTIM, metavar="F"
    )
    weight_decay: float = opt(0.0, "decoupled weight decay (adamw default 1e-2)", group=OPTIM, metavar="WD")
    ema: float = opt(
        0.0,
        "keep an exponential moving average of the weights with this momentum (e.g. 0.99: about the last "
        "100 steps) and validate, checkpoint and save it instead of the raw weights; 0 = off",
        group=OPTIM,
        metavar="M",
    )
    batch_size: int = opt(32, "images per step (per replica)", group=OPTIM, metavar="N")
    lr_find: bool = opt(
        False,
        "run the learning-rate range test instead of training: saves log/RUN/lr_find.png and prints the suggested --lr",
        group=OPTIM,
    )
    accum_steps: int = opt(
        1,
        "gradient accumulation: K steps act as one K x batch (Caffe iter_size); one device only",
        group=OPTIM,
        metavar="K",
    )
    head_weights: str = opt(
        "none",
        "each head's share of the loss from training positives: none, original "
        "(∝ frequency), inverse (N/pos), sqrt, effective (Cui et al. 2019)",
        group=IMBALANCE,
        choices=C.HEAD_WEIGHTS,
    )
    pos_weight: str = opt(
        "none",
        "inside each head, weight positives by negatives/positives",
        group=IMBALANCE,
        choices=C.POS_WEIGHTS,
        expected="auto or none",
    )
    loss: str = opt(
        "bce",
        "per-head loss: bce, focal, asl (asymmetric); multiclass: bce = categorical "
        "cross-entropy, focal = categorical focal",
        group=IMBALANCE,
        choices=C.LOSSES,
    )
    beta: float = opt(0.999, "beta of --head-weights effective", group=IMBALANCE)
    gamma: float = opt(2.0, "focal loss gamma", group=IMBALANCE)
    label_smoothing: float = opt(
        0.0, "targets move this far toward 0.5 (multiclass: toward 1/K)", group=IMBALANCE, metavar="S"
    )
    class_weights: str = opt(
        "none",
        "single-label tasks: weight each class's loss by training images (inverse "
        "= N/count, sqrt), normalised to mean 1",
        group=IMBALANCE,
        choices=C.CLASS_WEIGHTS,
    )
    jitter: float = opt(0.0, "colour jitter strength (brightness/contrast/saturation)", group=AUG, metavar="J")
    rotate: float = opt(0.0, "random rotation, +- degrees", group=AUG, metavar="DEG")
    mixup: float = opt(
        0.0,
        "MixUp (keras.layers.MixUp): each training image blended with another of its batch by a Beta(A, A) "
        "weight, their label vectors by the same weight (soft multi-label targets); A such as 0.2; 0 = off",
        group=AUG,
        metavar="A",
    )
    cutmix: float = opt(
        0.0,
        "CutMix (keras.layers.CutMix): a box of another image of the batch pasted in, the label vectors mixed by "
        "its area; the box's share is drawn from Beta(F, F), F such as 1.0; 0 = off",
        group=AUG,
        metavar="F",
    )
    mixed_precision: str = opt(
        "auto",
        "16-bit compute: auto = on with a GPU; on = bfloat16 where every GPU has it (compute capability "
        "8.0+: A100, H100), else float16 with loss scaling; or name the dtype",
        group=HW,
        choices=C.MIXED_PRECISION,
    )
    xla: bool = opt(False, "compile the training step with XLA", group=HW)
    eager: bool = opt(
        False,
        "run eagerly: no graph build (starts in seconds instead of ~1 min on CPU, steps run "
        "slower); for debugging and tiny smoke runs",
        group=HW,
    )
    cpu_devices: int = opt(
        1,
        "without a GPU, split the CPU into N logical devices and train on all of them "
        "through MirroredStrategy: rehearses multi-GPU training (batch per replica, gradients "
        "summed across replicas) on any machine; no speed-up",
        group=HW,
        metavar="N",
    )

    backend: str = opt(
        "auto",
        "Keras backend: auto = $KERAS_BACKEND if set, else tensorflow; jax when training on several "
        "machines (needs the jax extra: pip install -e '.[jax]')",
        group=HW,
        choices=C.BACKENDS,
    )
    workers: str | None = opt(
        None,
        "train on several machines: every process's HOST:PORT, the first is the coordinator; start the "
        "same command on each machine with its --worker-index (JAX backend, keras.distribution). "
        "Without it, KERAS_DISTRIBUTION_JOB_ADDRESSES/_PROCESS_ID or a TF_CONFIG of several tasks are used",
        group=MACHINES,
        metavar="H:P,H:P",
    )
    worker_index: int | None = opt(
        None,
        "this process's place in --workers (0 = the coordinator, the one that writes)",
        group=MACHINES,
        metavar="I",
    )

    def validate(self) -> None:
        """The checks that need neither the dataset nor TensorFlow (TrainError); the rest run in training."""
        check_choices(self, TrainError)
        if self.lr_mult < 0:
            raise TrainError(f"--lr-mult must be >= 0, got {self.lr_mult}")
        if self.cpu_devices < 1:
            raise TrainError(f"--cpu-devices must be >= 1, got {self.cpu_devices}")
        for name, value in (("--mixup", self.mixup), ("--cutmix", self.cutmix)):
            if value < 0:
                raise TrainError(f"{name} must be >= 0 (a Beta distribution's parameter; 0 = off), got {value}")
        self.stage_specs()

    def stage_specs(self) -> list[tuple[str, int, float]]:
        """(layers, epochs, lr) per stage: `heads:5,all:20:1e-4`, or without --stages one stage of --layers
        for --epochs."""
        if not self.stages:
            return [(self.layers, self.epochs, self.lr)]
        out = []
        for part in self.stages.split(","):
            bits = part.strip().split(":")
            if len(bits) not in (2, 3) or not bits[1].isdigit():
                raise TrainError(f"--stages: '{part}' is not GROUP:EPOCHS[:LR] (e.g. heads:5,all:20:1e-4)")
            try:
                lr = float(bits[2]) if len(bits) == 3 else self.lr
            except ValueError:
                raise TrainError(f"--stages: '{bits[2]}' in '{part}' is not a learning rate") from None
            out.append((bits[0], int(bits[1]), lr))
        return out
