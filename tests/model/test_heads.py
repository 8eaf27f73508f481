"""The multi-label heads' pooling (--head): CSRA against its formula, and the model it builds: shapes,
per-head loss weights, the heads group, a save/load round trip."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from conftest import SAMPLE
from fashion.core.errors import TrainError
from fashion.model import losses, network as model_lib
from fashion.model.layers import CSRA, ClassQueries, GroupLogits
from fashion.model.tasks.base import HEAD_PREFIX, HeadSpec, head_names

LABELS = (SAMPLE / "labels.txt").read_text().split()


def csra_by_hand(x: np.ndarray, w: np.ndarray, b: float, lam: float, t: float) -> np.ndarray:
    scores = (x @ w).reshape(len(x), -1)  # (N, locations)
    base = scores.mean(1)
    if t >= 99:
        att = scores.max(1)
    else:
        e = np.exp(t * (scores - scores.max(1, keepdims=True)))
        att = ((e / e.sum(1, keepdims=True)) * scores).sum(1)
    return (base + lam * att + b)[:, None]


@pytest.mark.parametrize("lam,t", [(0.0, 1.0), (0.1, 1.0), (0.3, 4.0), (0.5, 99.0)])
def test_csra_is_its_formula_and_lambda_0_is_gap_then_dense(lam, t):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 2, 2, 8)).astype("float32")
    layer = CSRA(lam, t)
    layer.build(x.shape)
    w, b = rng.normal(size=(8, 1)).astype("float32"), np.float32(0.25)
    layer.set_weights([w, np.array([b])])
    got = np.asarray(layer(x))
    np.testing.assert_allclose(got, csra_by_hand(x, w, b, lam, t), rtol=1e-5, atol=1e-5)
    if lam == 0.0:  # the original head: the score is linear, so its mean is Dense over the average
        np.testing.assert_allclose(got, x.mean((1, 2)) @ w + b, rtol=1e-5, atol=1e-5)
    else:  # the attention term moves the logit: the check above could not pass by accident
        assert np.abs(got - (x.mean((1, 2)) @ w + b)).max() > 1e-3


def test_ml_decoders_own_layers_are_their_formulas():
    """The queries are one learned vector per label, the same for each image; label i's logit is w_i · q_i + b_i."""
    rng = np.random.default_rng(0)
    tokens = rng.normal(size=(3, 4, 8)).astype("float32")
    queries = ClassQueries(5, 8)
    queries.build(tokens.shape)
    table = rng.normal(size=(5, 8)).astype("float32")
    queries.set_weights([table])
    np.testing.assert_array_equal(np.asarray(queries(tokens)), np.broadcast_to(table, (3, 5, 8)))
    q = rng.normal(size=(3, 5, 8)).astype("float32")
    group = GroupLogits()
    group.build(q.shape)
    w, b = rng.normal(size=(5, 8)).astype("float32"), rng.normal(size=5).astype("float32")
    group.set_weights([w, b])
    got = np.concatenate([np.asarray(t) for t in group(q)], axis=1)
    np.testing.assert_allclose(got, np.einsum("nkd,kd->nk", q, w) + b, rtol=1e-5, atol=1e-5)


# the heads group's weights: per label conv kernel + bias and CSRA kernel + bias; ML-Decoder's shared ones:
# tokens 2, queries 1, attention 8 (query/key/value/output kernels and biases), 2 norms x 2, feed-forward 2 x 2,
# group logits 2
HEAD_WEIGHTS = {"csra": 4 * len(LABELS), "mldecoder": 21}


@pytest.mark.slow
@pytest.mark.parametrize("spec", [HeadSpec("csra", 0.2, 2.0), HeadSpec("mldecoder", dim=32)], ids=lambda s: s.kind)
def test_heads_shapes_weights_group_and_round_trip(spec, tmp_path):
    keras.utils.set_random_seed(1)
    m = model_lib.build_model(LABELS, "mobilenetv2", 64, alpha=0.35, head=spec)  # 64 px: a 2x2 map to attend
    x = np.random.default_rng(0).integers(0, 256, (4, 64, 64, 3)).astype(np.uint8)
    out = m(x)
    heads = head_names(LABELS)
    assert sorted(out) == sorted(heads) and all(tuple(out[h].shape) == (4, 1) for h in heads)
    assert all(0.0 <= float(np.min(out[h])) and float(np.max(out[h])) <= 1.0 for h in heads)
    if spec.kind == "csra":
        assert all(m.get_layer(f"{h}_csra").lam == 0.2 for h in heads)

    # the heads group trains the heads and nothing of the trunk
    model_lib.set_trainable(m, "heads")
    names = [w.path for w in m.trainable_weights]
    assert len(names) == HEAD_WEIGHTS[spec.kind] and all(n.startswith(HEAD_PREFIX) for n in names), names
    assert not model_lib.trunk_of(m).trainable_weights

    # per-head loss weights still apply: the total is the weighted sum of the heads' losses
    weights = np.linspace(0.5, 2.0, len(heads))
    m.compile(
        optimizer="adam",
        loss={h: losses.HeadLoss("bce") for h in heads},
        loss_weights={h: float(w) for h, w in zip(heads, weights)},
    )
    y = {h: np.random.default_rng(k).integers(0, 2, (4, 1)).astype("float32") for k, h in enumerate(heads)}
    logs = m.evaluate(x, y, batch_size=4, verbose=0, return_dict=True)
    per_head = [float(np.mean(keras.losses.binary_crossentropy(y[h], np.asarray(out[h])))) for h in heads]
    assert logs["loss"] == pytest.approx(float(np.dot(weights, per_head)), rel=1e-4)

    # saved and loaded back (our layers are registered): the same outputs
    m.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras", compile=False)
    for h in heads:
        np.testing.assert_allclose(np.asarray(again(x)[h]), np.asarray(out[h]), atol=1e-6)


def test_csra_is_for_multilabel_heads_only():
    with pytest.raises(TrainError, match="--head csra is for multi-label heads"):
        model_lib.build_model(["a", "b", "c"], "mobilenetv2", 32, task="multiclass", alpha=0.35, head=HeadSpec("csra"))
