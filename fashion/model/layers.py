"""Layers of the heads that keras.layers does not have: CSRA's class-specific residual attention, and
ML-Decoder's learned class queries and group fully-connected logits (its attention is Keras' own
MultiHeadAttention).

Registered with Keras (package "fashion"), so a bundle's model.keras loads wherever this module has been
imported (fashion.model.tasks.multilabel imports it).
"""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="fashion")
class CSRA(keras.layers.Layer):
    """Class-specific residual attention for one class: a 1x1 score per location s_k = w·x_k, pooled as
    mean_k(s_k) + λ · Σ_k softmax(T·s)_k s_k (+ bias): one logit. With λ = 0 it is GAP then Dense 1 (the
    score is linear), so it costs no parameter more than the original head. Written here: keras has no
    CSRA layer, and the paper's reference code is PyTorch.

    Args:
      lam: weight of the attention term. Defaults to 0.1.
      temperature: softmax temperature over the locations; >= 99 takes the maximum. Defaults to 1.0.

    >>> import numpy as np
    >>> layer = CSRA(lam=0.0)
    >>> layer(np.ones((2, 3, 3, 4), "float32")).shape
    (2, 1)
    """

    def __init__(self, lam: float = 0.1, temperature: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.lam, self.temperature = float(lam), float(temperature)

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], 1), initializer="glorot_uniform", name="kernel")
        self.bias = self.add_weight(shape=(1,), initializer="zeros", name="bias")

    def call(self, x):
        ops = keras.ops
        x = ops.cast(x, self.compute_dtype)
        scores = ops.reshape(ops.matmul(x, ops.cast(self.kernel, self.compute_dtype)), (ops.shape(x)[0], -1))
        base = ops.mean(scores, axis=1, keepdims=True)
        if scores.shape[1] == 1:  # a 1x1 map (a small input): the one location is its own attention
            attended = scores
        elif self.temperature >= 99:
            attended = ops.max(scores, axis=1, keepdims=True)
        else:
            weights = ops.softmax(self.temperature * scores, axis=1)
            attended = ops.sum(weights * scores, axis=1, keepdims=True)
        return base + self.lam * attended + ops.cast(self.bias, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1)

    def get_config(self):
        return {**super().get_config(), "lam": self.lam, "temperature": self.temperature}


@keras.saving.register_keras_serializable(package="fashion")
class ClassQueries(keras.layers.Layer):
    """ML-Decoder's queries: one learned `dim`-vector per class, the same for every image of the batch
    (the input only gives the batch size). Written here: Keras has no layer that is a learned constant.

    Args:
      classes: how many queries (one per label).
      dim: the length of each query. Defaults to 256.

    >>> import numpy as np
    >>> ClassQueries(13, 8)(np.zeros((2, 4, 8), "float32")).shape
    (2, 13, 8)
    """

    def __init__(self, classes: int, dim: int = 256, **kwargs):
        super().__init__(**kwargs)
        self.classes, self.dim = int(classes), int(dim)

    def build(self, input_shape):
        self.queries = self.add_weight(shape=(self.classes, self.dim), initializer="random_normal", name="queries")

    def call(self, tokens):
        q = keras.ops.cast(self.queries, self.compute_dtype)
        return keras.ops.broadcast_to(q[None], (keras.ops.shape(tokens)[0], self.classes, self.dim))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.classes, self.dim)

    def get_config(self):
        return {**super().get_config(), "classes": self.classes, "dim": self.dim}


@keras.saving.register_keras_serializable(package="fashion")
class GroupLogits(keras.layers.Layer):
    """ML-Decoder's group fully-connected layer with one query per group: class i's logit is
    w_i · q_i + b_i over its own decoded query q_i, returned as one (B, 1) logit per class so each class
    keeps its own named head (and loss weight). Written here: Keras' Dense shares one kernel over the
    query axis; EinsumDense would, but returns one (B, classes) tensor that then needs splitting.

    >>> import numpy as np
    >>> [t.shape for t in GroupLogits()(np.ones((2, 3, 4), "float32"))]
    [(2, 1), (2, 1), (2, 1)]
    """

    def build(self, input_shape):
        classes, dim = input_shape[1], input_shape[2]
        self.kernel = self.add_weight(shape=(classes, dim), initializer="glorot_uniform", name="kernel")
        self.bias = self.add_weight(shape=(classes,), initializer="zeros", name="bias")

    def call(self, q):
        ops = keras.ops
        q = ops.cast(q, self.compute_dtype)
        logits = ops.sum(q * ops.cast(self.kernel, self.compute_dtype)[None], axis=-1)
        logits = logits + ops.cast(self.bias, self.compute_dtype)
        return [logits[:, i : i + 1] for i in range(logits.shape[1])]

    def compute_output_shape(self, input_shape):
        return [(input_shape[0], 1)] * input_shape[1]
