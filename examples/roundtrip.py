"""Round trip: full-int8 .tflite -> reconstructed Keras -> fine-tuned -> full-int8 .tflite.

The source model is trained on sklearn's digits; the new data is a shifted and brightened
version of them (think: a camera mounted differently). The fine-tuned export keeps the
source's interface (names, shapes, int8 I/O) and recipe, scores better on the shifted test
split, and is registered with the whole lineage chain.

Uses MLFLOW_TRACKING_URI when set, else the embedded SQLite store in ./.mlflow.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import mlflow  # noqa: E402
from demo import digits, train_digits_model  # noqa: E402
from mlflow_tflite_keras.tracking import experiment, use_default_tracking  # noqa: E402

MODEL_NAME = "digits-roundtrip"


def shifted(x, seed=0):
    """The new domain: digits moved right/down by one pixel and brightened."""
    rng = np.random.default_rng(seed)
    moved = np.roll(np.roll(x, 1, axis=1), 1, axis=2)
    moved[:, 0, :, :] = 0
    moved[:, :, 0, :] = 0
    return np.clip(moved * 1.3 + rng.normal(0, 0.05, x.shape), 0, 1).astype(np.float32)


def accuracy(model_uri, x, y):
    return float(np.mean(mlflow.pyfunc.load_model(model_uri).predict(x).argmax(-1) == y))


def main():
    from mlflow_tflite_keras import finetune, keras_to_tflite, register_keras_version

    print(f"Tracking URI: {use_default_tracking()}")
    mlflow.set_experiment(experiment_id=experiment("tflite-keras-roundtrip"))
    x, y = digits()
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    base_x, base_y = x[:900], y[:900]
    new_x, new_y = shifted(x[900:1400]), y[900:1400]
    test_x, test_y = shifted(x[1400:], seed=1), y[1400:]

    print("1. Source: a digits CNN as full-int8 .tflite (int8 input and output)")
    source_bytes = keras_to_tflite(train_digits_model(base_x, base_y), "full-int8",
                                   representative_data=base_x[:200])
    with mlflow.start_run(run_name="source-tflite"):
        info = mlflow.tflite_keras.log_model(source_bytes, name="model", input_example=x[:2],
                                             registered_model_name=MODEL_NAME)
    source_uri = f"models:/{MODEL_NAME}/{info.registered_model_version}"

    print("2. Reconstruct it as Keras and register it next to the source")
    keras_version = register_keras_version(source_uri, progress=print)

    print("3. Fine-tune on the shifted split and export with the source's recipe")
    result = finetune(f"models:/{MODEL_NAME}/{keras_version.version}", (new_x, new_y),
                      epochs=15, learning_rate=1e-3, progress=print)
    new_uri = f"models:/{result.tflite_version.name}/{result.tflite_version.version}"

    source_acc = accuracy(source_uri, test_x, test_y)
    new_acc = accuracy(new_uri, test_x, test_y)
    print("\nShifted test split accuracy (both run as full-int8 .tflite on LiteRT):")
    print(f"  source   {source_uri:<28} {source_acc:.3f}")
    print(f"  new      {new_uri:<28} {new_acc:.3f}")
    print(f"\nInterface identical to the source: {result.interface.ok}")
    for difference in result.interface.differences:
        print(f"  {difference}")
    src = mlflow.tflite_keras.load_model(source_uri).description
    new = mlflow.tflite_keras.load_model(new_uri).description
    print(f"Recipe: source {src['quantization']}, new {new['quantization']}; inputs "
          f"{[(t['dtype'], t['shape_signature']) for t in new['inputs']]}")
    print(f"Lineage: {result.tflite_version.tags['tflite_keras.lineage']}")
    print(f"Export parity (new .tflite vs fine-tuned Keras):\n{result.parity}")
    if new_acc <= source_acc:
        raise SystemExit("The fine-tuned model did not improve on the shifted split.")


if __name__ == "__main__":
    main()
