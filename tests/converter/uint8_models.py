"""Full-uint8 test models, the kind TF1's toco made (SSD MobileNet's ``detect.tflite``, TF1
quantization-aware-trained classifiers): uint8 activations, uint8 per-tensor asymmetric
weights, int32 biases. TF2's converter no longer emits them, so a per-tensor full-int8 model
is rewritten the way toco's uint8 output relates to it (:func:`int8_to_uint8`): every int8
tensor's integers and zero point shifted by +128, nothing else changed. The uint8 kernels
compute ``(q - zero_point)`` (``filter_offset = -zero_point``), so the rewritten model
computes the int8 one's integers plus 128 (up to the kernels' own rounding).
"""

from __future__ import annotations

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from model_factory import cached, digits


def int8_to_uint8(data: bytes) -> bytes:
    """The uint8 twin of a full-int8 ``.tflite``: INT8 tensors become UINT8 with their
    stored integers and zero points +128 (constants rewritten in their buffers)."""
    import flatbuffers

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(bytearray(data), 0))
    for subgraph in model.subgraphs:
        for t in subgraph.tensors:
            if t.type != schema.TensorType.INT8:
                continue
            t.type = schema.TensorType.UINT8
            q = t.quantization
            if q is not None and q.zeroPoint is not None:
                q.zeroPoint = [int(z) + 128 for z in np.asarray(q.zeroPoint).reshape(-1)]
            buffer = model.buffers[t.buffer] if t.buffer else None
            if buffer is not None and buffer.data is not None and len(buffer.data):
                stored = np.asarray(buffer.data, np.uint8).view(np.int8)
                buffer.data = (stored.astype(np.int16) + 128).astype(np.uint8)
    builder = flatbuffers.Builder(len(data) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def per_tensor_int8_tflite(make_model, representative) -> bytes:
    """``make_model()`` converted to full int8 with per-tensor weights (as toco quantized)."""
    import contextlib
    import io
    import tempfile

    import tensorflow as tf

    from mlflow_tflite_keras.keras_export import export_saved_model, representative_dataset

    with tempfile.TemporaryDirectory() as d:
        export_saved_model(make_model(), d)
        converter = tf.lite.TFLiteConverter.from_saved_model(d)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset(representative)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
        converter._experimental_disable_per_channel = True
        with contextlib.redirect_stdout(io.StringIO()):
            return converter.convert()


def _trained(build):
    def make():
        import keras

        keras.utils.set_random_seed(0)
        model = build()
        model.compile("adam", ["sparse_categorical_crossentropy"] * len(model.outputs))
        x, y = digits()
        model.fit(x, [y] * len(model.outputs) if len(model.outputs) > 1 else y, epochs=8,
                  batch_size=32, verbose=0, shuffle=False)
        return model
    return make


def _digits_cnn():
    """The op mix of a TF1 uint8 detector's backbone on the digits: RELU6 convolutions, a
    depthwise convolution, a residual ADD, a CONCATENATION, AVERAGE_POOL_2D, a dense
    softmax head and a LOGISTIC head."""
    import keras

    x = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu6")(x)
    d = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu6")(h)
    p = keras.layers.Conv2D(16, 1)(d)
    h = keras.layers.Add()([h, p])
    h = keras.layers.Concatenate()([h, keras.layers.Conv2D(8, 1, activation="relu")(d)])
    h = keras.layers.AveragePooling2D(2)(h)
    f = keras.layers.Flatten()(h)
    return keras.Model(x, [keras.layers.Dense(10, activation="softmax")(f),
                           keras.layers.Dense(10, activation="sigmoid")(f)])


def _inverted_residual():
    """A MobileNetV2-like inverted-residual stack on the digits."""
    import keras

    def block(x, expand, channels, strides=1):
        h = keras.layers.Conv2D(expand, 1, activation="relu6")(x)
        h = keras.layers.DepthwiseConv2D(3, strides=strides, padding="same",
                                         activation="relu6")(h)
        h = keras.layers.Conv2D(channels, 1)(h)
        return keras.layers.Add()([x, h]) if strides == 1 and x.shape[-1] == channels else h

    x = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu6")(x)
    h = block(h, 32, 16)
    h = block(h, 48, 24, strides=2)
    h = block(h, 72, 24)
    h = keras.layers.AveragePooling2D(4)(h)
    return keras.Model(x, keras.layers.Dense(10, activation="softmax")(
        keras.layers.Flatten()(h)))


UINT8_MODELS = {"digits-cnn": _digits_cnn, "inverted-residual": _inverted_residual}


def uint8_tflite(name: str) -> tuple[bytes, bytes]:
    """(full-int8 per-tensor source, its full-uint8 twin) of a trained digits model, cached."""
    build = UINT8_MODELS[name]

    def int8():
        return per_tensor_int8_tflite(_trained(build), digits()[0][:128])

    source = cached(f"uint8-source-{name}", int8)
    return source, int8_to_uint8(source)
