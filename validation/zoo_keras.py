"""Keras models through tf2onnx (NHWC inputs): OnnxBackend against TensorFlow's own gradients.

Each Keras model is built twice with the same seeded random weights (``weights=None``; nothing is
downloaded): in float32, exported by ``tf2onnx.convert.from_function`` at each opset asked for,
and in float64 with a logit head, TensorFlow's reference. The export is read by
:class:`~fisher_ref.backends.OnnxBackend` and compared with TensorFlow's class gradients
(``tf.GradientTape.jacobian`` of ``-log softmax``) of the float64 twin, the exact model, as
:mod:`fisher_ref.validation.zoo` compares with torch: gradients (largest difference relative to the
largest gradient; beside it the float32 TensorFlow model's own distance from float64), top-5 Fisher
eigenvalues (relative to lambda_1) and |cos| of the OSSA directions, and with ``--audit`` the audit of the file on NCHW data with ``layout="nchw"`` and
a per-channel ``mean``/``std`` (the path the README documents for NHWC models).

Needs TensorFlow and tf2onnx (``pip install tensorflow-cpu tf2onnx``; they are not in the
project's extras: they pin their own protobuf and numpy), so it runs in its own environment:

    python -m fisher_ref.validation.zoo_keras [--opsets 13 17 20] [--audit] [--markdown zoo_keras.md]
    python -m fisher_ref.validation.zoo_keras --fixtures tests/data/keras   # the test suite's files
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from .zoo import (AUDITABLE, Row, _compare, audit_in_child, exported_backend, finish, mark_float32_ill_conditioned,
                  outcome, select)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _applications(keras, size: int) -> dict:
    """``{name: (family, builder(head) -> keras.Model, input_shape)}`` of keras.applications networks."""
    app = keras.applications
    shape = (size, size, 3)

    def build(fn, **kw):
        return lambda head: fn(input_shape=shape, weights=None, classes=10, classifier_activation=head, **kw)

    return {
        "Keras MobileNetV2": ("MobileNetV2", build(app.MobileNetV2, alpha=0.35), shape),
        "Keras MobileNetV3Small": ("MobileNetV3", build(app.MobileNetV3Small, minimalistic=False,
                                                        include_preprocessing=False), shape),
        "Keras ResNet50": ("ResNet", build(app.ResNet50), shape),
        "Keras EfficientNetB0": ("EfficientNet", build(app.EfficientNetB0), shape),
        "Keras DenseNet121": ("DenseNet", build(app.DenseNet121), shape),
        "Keras ConvNeXtTiny": ("ConvNeXt", build(app.ConvNeXtTiny, include_preprocessing=False), shape),
    }


def _small(keras) -> dict:
    """Small Keras models of the layer kinds the applications lack (and logit heads)."""
    L = keras.layers

    def cnn(head):
        return keras.Sequential([keras.Input((16, 16, 3)), L.Conv2D(8, 3, padding="same"), L.BatchNormalization(),
                                 L.ReLU(), L.DepthwiseConv2D(3, padding="same"), L.Activation("swish"),
                                 L.MaxPooling2D(), L.Conv2D(12, 3, strides=2, padding="same", activation="relu"),
                                 L.GlobalAveragePooling2D(), L.Dense(5, activation=head)])

    def lstm(head):
        return keras.Sequential([keras.Input((6, 4)), L.LSTM(8), L.Dense(5, activation=head)])

    def gru(head):
        return keras.Sequential([keras.Input((6, 4)), L.GRU(8), L.Dense(5, activation=head)])

    def attention(head):
        x = keras.Input((6, 8))
        h = L.LayerNormalization()(x)
        h = x + L.MultiHeadAttention(num_heads=2, key_dim=4)(h, h)
        h = h + L.Dense(8, activation="gelu")(L.LayerNormalization()(h))
        return keras.Model(x, L.Dense(5, activation=head)(L.GlobalAveragePooling1D()(h)))

    return {
        "Keras CNN (BatchNorm, depthwise, swish, stride-2 same)": ("CNN", cnn, (16, 16, 3)),
        "Keras LSTM classifier": ("LSTM", lstm, (6, 4)),
        "Keras GRU classifier": ("GRU", gru, (6, 4)),
        "Keras transformer block (MHA, LayerNorm, GELU)": ("ViT/DeiT", attention, (6, 8)),
    }


def _set_precision(keras, dtype: str) -> None:
    keras.config.set_floatx(dtype)
    keras.config.set_dtype_policy(dtype)


def _calibrate_batch_norm(keras, model, seed: int, n: int = 32) -> None:
    """Set every BatchNormalization's moving statistics to those of one training-mode pass on ``n``
    seeded random inputs (momentum 0 for that pass), as a trained network's would be. Keras' own
    (0, 1) statistics leave a random-weight MobileNet's activations unnormalised, its ReLU6 layers
    saturated and its output the same for every input (gradients of 1e-12: nothing to compare)."""
    layers = [m for m in model._flatten_layers() if isinstance(m, keras.layers.BatchNormalization)]
    if not layers:
        return
    saved = [m.momentum for m in layers]
    shape = tuple(model.input_shape[1:])
    try:
        for m in layers:
            m.momentum = 0.0
        model(np.random.default_rng(seed + 1).random((n, *shape)).astype(np.float32), training=True)
    finally:
        for m, mom in zip(layers, saved):
            m.momentum = mom


def _twins(tf, keras, builder, seed: int = 0):
    """``(float32 model with a softmax head, float64 model with a logit head)``, the same weights."""
    keras.utils.set_random_seed(seed)
    _set_precision(keras, "float32")
    m32 = builder("softmax")
    _calibrate_batch_norm(keras, m32, seed)
    _set_precision(keras, "float64")
    try:
        m64 = builder(None)
    finally:
        _set_precision(keras, "float32")
    m64.set_weights([w.astype(np.float64) for w in m32.get_weights()])
    return m32, m64


class TFGradients:
    """``fn(x) -> (probs (C,), grads (C, *input_shape))`` of a Keras model, for ``fisher_ref.as_backend``."""

    def __init__(self, tf, model, dtype, logits: bool):
        self.tf, self.model, self.dtype, self.logits = tf, model, dtype, logits

    def __call__(self, x):
        tf = self.tf
        xt = tf.constant(np.asarray(x)[None], dtype=self.dtype)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(xt)
            out = self.model(xt, training=False)
            logp = tf.nn.log_softmax(out) if self.logits else tf.math.log(out)
            loss = -logp[0]
        J = tape.jacobian(loss, xt, experimental_use_pfor=False)
        return np.exp(logp[0].numpy()), J.numpy()[:, 0]


def erfc_as_one_minus_erf(ctx, node, name, args):
    """tf2onnx handler for TensorFlow's ``Erfc`` (Keras' exact GELU), which tf2onnx 1.17 does not
    convert (it leaves an ``Erfc`` node that is no ONNX operator): ``1 - Erf(x)``."""
    node.type = "Erf"
    dtype = ctx.get_dtype(node.output[0])
    one = ctx.make_const(tf2onnx_name("one"), np.ones((), dtype=_NP_OF_ONNX.get(dtype, np.float32)))
    ctx.insert_new_node_on_output("Sub", node.output[0], inputs=[one.output[0], node.output[0]])
    return node


def tf2onnx_name(what: str) -> str:
    from tf2onnx import utils

    return utils.make_name(what)


_NP_OF_ONNX = {1: np.float32, 11: np.float64, 10: np.float16}
CUSTOM_OPS = {"Erfc": (erfc_as_one_minus_erf, [])}


def export(tf, tf2onnx, model, input_shape: tuple, path: Path, opset: int | None) -> None:
    """tf2onnx's ONNX of ``model`` (a dynamic batch axis), refusing an export that left ops unconverted."""
    spec = (tf.TensorSpec((None, *input_shape), tf.float32, name="input"),)
    fn = tf.function(lambda x: model(x, training=False))
    tf2onnx.convert.from_function(fn, input_signature=spec, opset=opset, output_path=str(path),
                                  custom_op_handlers=CUSTOM_OPS)


def check(name: str, family: str, builder, input_shape: tuple, *, opset: int | None = None, n: int = 2,
          audit: bool = False, folder: Path) -> Row:
    import tensorflow as tf
    import tf2onnx
    from tensorflow import keras

    import fisher_ref as fr

    m32, m64 = _twins(tf, keras, builder)
    x = np.random.default_rng(0).random((n, *input_shape), dtype=np.float32)
    tb = fr.as_backend(TFGradients(tf, m32, tf.float32, logits=False), input_shape=input_shape)
    t64 = fr.as_backend(TFGradients(tf, m64, tf.float64, logits=True), input_shape=input_shape)
    row = Row(name, family, f"tf2onnx {tf2onnx.__version__}", tuple(input_shape), int(m32.output_shape[-1]), opset)
    path = folder / f"{abs(hash((name, opset))):x}.onnx"
    ob = exported_backend(row, lambda: export(tf, tf2onnx, m32, input_shape, path, opset), path)
    if ob is None:
        return row
    row.notes.append(f"output {ob.output_kind_}")
    compare_with_float64(row, tb, t64, ob, x, fr)
    if audit and row.status in AUDITABLE and len(input_shape) == 3:
        _audit_nchw(row, path, x, folder)
    return row


def compare_with_float64(row: Row, tb32, tb64, ob, x: np.ndarray, fr) -> None:
    """The zoo's comparison with TensorFlow float64 as the reference (the exact model: a float32
    TensorFlow is itself up to 5% off on a random ResNet50), and TensorFlow float32's own distance from
    it beside, to tell a float32-ill-conditioned model from a disagreement."""
    g64, w64 = _compare(row, tb64, ob, x, fr)
    row.onnx_float64_error = row.gradient_error
    _, g32 = tb32.class_gradients(x)
    row.torch_float32_error = float(np.abs(g32 - g64).max() / max(np.abs(g64).max(), 1e-300))
    if row.status == "disagrees":
        mark_float32_ill_conditioned(row, x, fr, tb32, tb64, w64)


def _audit_nchw(row: Row, path: Path, x: np.ndarray, folder: Path) -> None:
    """``fisher-ref audit`` of an NHWC model on NCHW pixel data with ``--layout nchw`` and per-channel
    ``--mean`` / ``--std`` (the README's recipe)."""
    pixels = np.clip(x * np.asarray(STD, np.float32) + np.asarray(MEAN, np.float32), 0, 1).transpose(0, 3, 1, 2)
    audit_in_child(row, path, np.ascontiguousarray(pixels), folder, "--layout", "nchw",
                   "--mean", *map(str, MEAN), "--std", *map(str, STD))


def write_fixture(name: str, builder, input_shape: tuple, folder: Path, opset: int = 17) -> dict:
    """A tf2onnx export and TensorFlow's float64 reference for the test suite (no TensorFlow there)."""
    import tensorflow as tf
    import tf2onnx
    from tensorflow import keras

    m32, m64 = _twins(tf, keras, builder)
    stem = "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")
    export(tf, tf2onnx, m32, input_shape, folder / f"{stem}.onnx", opset)
    x = np.random.default_rng(0).random((3, *input_shape), dtype=np.float32)
    ref = TFGradients(tf, m64, tf.float64, logits=True)
    p, g = zip(*(ref(xi.astype(np.float64)) for xi in x))
    np.savez_compressed(folder / f"{stem}.npz", x=x, probs=np.stack(p), grads=np.stack(g))
    return dict(name=name, file=f"{stem}.onnx", reference=f"{stem}.npz", opset=opset, input_shape=list(input_shape),
                tensorflow=tf.__version__, keras=keras.__version__, tf2onnx=tf2onnx.__version__)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fisher_ref.validation.zoo_keras", description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=32, help="image size of the keras.applications networks")
    ap.add_argument("--opsets", nargs="+", type=int, default=[None], help="ONNX opsets (default: tf2onnx's)")
    ap.add_argument("--only", nargs="+", help="models whose name contains one of these strings")
    ap.add_argument("--audit", action="store_true", help="also audit each export (NCHW data, --layout nchw)")
    ap.add_argument("--out", help="write the rows as JSON here")
    ap.add_argument("--markdown", help="write the table as Markdown here")
    ap.add_argument("--fixtures", help="instead: write the test suite's exports and references into this folder")
    args = ap.parse_args(argv)
    try:
        from tensorflow import keras
    except ImportError:
        print("zoo_keras: needs TensorFlow and tf2onnx: pip install tensorflow-cpu tf2onnx", file=sys.stderr)
        return 2
    if args.size < 32:
        ap.error(f"--size must be at least 32 (the smallest keras.applications accept), got {args.size}")
    models = {**_small(keras), **_applications(keras, args.size)}
    if args.fixtures:
        folder = Path(args.fixtures)
        folder.mkdir(parents=True, exist_ok=True)
        small = _small(keras)
        meta = [write_fixture(name, builder, shape, folder) for name, (_, builder, shape) in small.items()]
        (folder / "fixtures.json").write_text(json.dumps(meta, indent=1) + "\n")
        print(f"zoo_keras: wrote {len(meta)} exports and references into {folder}")
        return 0
    models = select(models, args.only, ap)
    rows = []
    with tempfile.TemporaryDirectory(prefix="fisher_ref_zoo_keras_") as tmp:
        for i, (name, (family, builder, shape)) in enumerate(models.items(), 1):
            for opset in args.opsets:
                row = check(name, family, builder, shape, opset=opset, audit=args.audit, folder=Path(tmp))
                rows.append(row)
                print(f"[{i}/{len(models)}] {name} (opset {opset or 'default'}): {outcome(row)}", flush=True)
    return finish("zoo_keras", rows, args.out, args.markdown)


if __name__ == "__main__":
    sys.exit(main())
