"""The main job, end to end on the embedded default (SQLite store + local artifacts).

1. Train a small CNN on sklearn's digits and convert it to a full-int8 ``.tflite``.
2. Log and register it with the ``tflite_keras`` flavor.
3. Load it back through ``mlflow.pyfunc`` (LiteRT, no TensorFlow) and predict.
4. Reconstruct it as a trainable Keras model, check parity against the interpreter, and
   register the Keras version next to the ``.tflite`` version, with lineage both ways.

Uses ``MLFLOW_TRACKING_URI`` when set, else ``./.mlflow/mlflow.db``.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import numpy as np  # noqa: E402

import mlflow  # noqa: E402
from mlflow_tflite_keras.tracking import experiment, use_default_tracking  # noqa: E402

MODEL_NAME = "digits-tflite"


def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]
    return x, d.target.astype(np.int64)


def train_digits_model(x, y, epochs=40):
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    return model


def print_versions(name):
    from mlflow_tflite_keras.lineage import CHAIN, KERAS_VERSIONS, PARITY_PASSED, ROLE

    client = mlflow.MlflowClient()
    aliases = {}
    for alias, version in client.get_registered_model(name).aliases.items():
        aliases.setdefault(version, []).append(alias)
    print(f"\nRegistered model '{name}':")
    for mv in sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version)):
        role = mv.tags.get(ROLE, "-")
        link = (f"lineage {mv.tags[CHAIN]}" if CHAIN in mv.tags else
                f"keras versions: {mv.tags.get(KERAS_VERSIONS, '-')}")
        parity = ""
        if PARITY_PASSED in mv.tags:
            metrics = client.get_run(mv.run_id).data.metrics
            parity = (f", parity {'passed' if mv.tags[PARITY_PASSED] == '1' else 'FAILED'} "
                      f"(cosine {metrics.get('parity_cosine', float('nan')):.4f}, top-1 "
                      f"{metrics.get('parity_top1_agreement', float('nan')):.3f})")
        alias_text = f" @{','.join(aliases[mv.version])}" if mv.version in aliases else ""
        print(f"  v{mv.version}{alias_text}: {role}; {link}{parity}")


def main():
    uri = use_default_tracking()
    print(f"Tracking URI: {uri}")
    mlflow.set_experiment(experiment_id=experiment("tflite-keras-demo"))

    x, y = digits()
    split = 1400
    print("Training a digits CNN and converting it to full-int8 .tflite ...")
    keras_model = train_digits_model(x[:split], y[:split])
    from mlflow_tflite_keras import keras_to_tflite

    tflite_bytes = keras_to_tflite(keras_model, "full-int8", representative_data=x[:200])
    print(f"  .tflite: {len(tflite_bytes)} bytes")

    with mlflow.start_run(run_name="log-digits-tflite") as run:
        info = mlflow.tflite_keras.log_model(
            tflite_bytes, name="model", registered_model_name=MODEL_NAME,
            input_example=x[:2],
        )
    print(f"Logged {info.model_uri} (run {run.info.run_id}), "
          f"registered as {MODEL_NAME} version {info.registered_model_version}")

    uri = f"models:/{MODEL_NAME}/{info.registered_model_version}"
    pyfunc_model = mlflow.pyfunc.load_model(uri)
    probabilities = pyfunc_model.predict(x[split:])
    accuracy = float(np.mean(probabilities.argmax(-1) == y[split:]))
    keras_accuracy = float(np.mean(keras_model.predict(x[split:], verbose=0).argmax(-1)
                                   == y[split:]))
    print(f"Predictions via pyfunc (LiteRT) for the first 10 held-out digits: "
          f"{probabilities[:10].argmax(-1).tolist()} (true {y[split:split + 10].tolist()})")
    print(f"Held-out accuracy: tflite int8 {accuracy:.3f}, keras float {keras_accuracy:.3f}")
    conf = pyfunc_model.metadata.flavors["tflite_keras"]
    print(f"Flavor: quantization={conf['quantization']}, ops={conf['operators']}")

    print("\nReconstructing the .tflite as Keras and registering it next to the source ...")
    from mlflow_tflite_keras import register_keras_version

    keras_version = register_keras_version(uri, alias="candidate", progress=print)
    print_versions(MODEL_NAME)
    keras_model_back = mlflow.keras.load_model(f"models:/{MODEL_NAME}/{keras_version.version}")
    back_accuracy = float(np.mean(keras_model_back.predict(x[split:], verbose=0).argmax(-1)
                                  == y[split:]))
    print(f"Held-out accuracy of the reconstructed Keras version: {back_accuracy:.3f}")

    # A request body for the served model: the first held-out digit, shape [1, 8, 8, 1].
    os.makedirs(".mlflow", exist_ok=True)
    payload = os.path.join(".mlflow", "digit.json")
    with open(payload, "w") as f:
        json.dump({"inputs": x[split:split + 1].tolist()}, f)
    answer = int(probabilities[0].argmax())
    model_var = "" if uri == f"models:/{MODEL_NAME}/1" else f" MODEL={uri}"
    print("\nNext steps (from this directory; nothing to activate):")
    print("  Open the UI:  make ui   # http://127.0.0.1:5000")
    print(f"  Serve it:     make serve{model_var}   # LiteRT on 127.0.0.1:5001")
    print("  Query it:     curl -s 127.0.0.1:5001/invocations -H 'Content-Type: application/json'"
          f" -d @{payload}")
    print(f"                answer: digit {answer} (true {int(y[split])}), "
          "in {\"predictions\": [[10 probabilities]]}")
    print(f"  Verify it:    .venv/bin/mlflow-tflite-keras verify models:/{MODEL_NAME}@candidate")
    print(f"  Inspect it:   .venv/bin/mlflow-tflite-keras inspect models:/{MODEL_NAME}/"
          f"{keras_version.version}")


if __name__ == "__main__":
    main()
