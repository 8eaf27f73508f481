"""Shared by the training-step benchmarks: a step timer and the plain-Keras reference model.

Imports Keras only (no TensorFlow), so bench/train_step_gpu.py runs on any Keras backend.
"""

from __future__ import annotations

import time

import keras


class StepTimer(keras.callbacks.Callback):
    """Wall-clock time at the end of each training step."""

    def __init__(self):
        super().__init__()
        self.ends: list[float] = []

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())

    def rate(self, batch: int, warmup: int) -> float:
        """Images/s from the end of the last warm-up step (graph build or compile excluded)."""
        t = self.ends[warmup - 1 :]
        return batch * (len(t) - 1) / (t[-1] - t[0])


def plain_keras(size: int, group: str, fused: bool = False) -> keras.Model:
    """What a Keras tutorial writes: keras.applications.DenseNet121 + 13 inline heads, BCE per output.

    `fused` computes the 13 Conv2D(64) heads as one Conv2D(832) then splits it: the same function.
    """
    keras.utils.set_random_seed(0)
    inp = keras.Input((size, size, 3))
    trunk = keras.applications.DenseNet121(include_top=False, weights=None, input_shape=(size, size, 3))
    trunk.trainable = group != "heads"
    f = trunk(inp)
    outs = {}
    if fused:
        h = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(64 * 13, 3, padding="same", activation="relu")(f))
        parts = [keras.layers.Lambda(lambda t, i=i: t[:, 64 * i : 64 * (i + 1)])(h) for i in range(13)]
    else:
        parts = [
            keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(64, 3, padding="same", activation="relu")(f))
            for _ in range(13)
        ]
    for i, h in enumerate(parts):
        outs[f"o{i}"] = keras.layers.Dense(1, activation="sigmoid", dtype="float32", name=f"o{i}")(h)
    m = keras.Model(inp, outs)
    m.compile(optimizer=keras.optimizers.Adam(1e-3), loss={k: "binary_crossentropy" for k in outs})
    return m
