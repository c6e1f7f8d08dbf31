"""The main job, end to end on the embedded default (SQLite store + local artifacts).

1. Train a small CNN on sklearn's digits and convert it to a full-int8 ``.tflite``.
2. Log and register it with the ``tflite_keras`` flavor.
3. Load it back through ``mlflow.pyfunc`` (LiteRT, no TensorFlow) and predict.
4. Reconstruct it as a trainable Keras model, check parity against the interpreter, and
   register the Keras version next to the ``.tflite`` version, with lineage both ways.

Uses ``MLFLOW_TRACKING_URI`` when set, else ``./.mlflow/mlflow.db``.
"""

from __future__ import annotations

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
    from mlflow_tflite_keras.lineage import KERAS_VERSIONS, ROLE, SOURCE_URI

    client = mlflow.MlflowClient()
    aliases = {}
    for alias, version in client.get_registered_model(name).aliases.items():
        aliases.setdefault(version, []).append(alias)
    print(f"\nRegistered model '{name}':")
    for mv in sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version)):
        role = mv.tags.get(ROLE, "-")
        link = (f"from {mv.tags[SOURCE_URI]}" if SOURCE_URI in mv.tags else
                f"keras versions: {mv.tags.get(KERAS_VERSIONS, '-')}")
        parity = ""
        if "tflite_keras.parity_cosine" in mv.tags:
            parity = (f", parity cosine {mv.tags['tflite_keras.parity_cosine']}, top-1 "
                      f"{mv.tags.get('tflite_keras.parity_top1_agreement', '-')}")
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
    from mlflow_tflite_keras.export import keras_to_tflite

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
    from mlflow_tflite_keras.lineage import register_keras_version

    keras_version = register_keras_version(uri, alias="candidate", progress=print)
    print_versions(MODEL_NAME)
    keras_model_back = mlflow.keras.load_model(f"models:/{MODEL_NAME}/{keras_version.version}")
    back_accuracy = float(np.mean(keras_model_back.predict(x[split:], verbose=0).argmax(-1)
                                  == y[split:]))
    print(f"Held-out accuracy of the reconstructed Keras version: {back_accuracy:.3f}")

    tracking = mlflow.get_tracking_uri()
    print("\nNext steps:")
    print(f"  Open the UI:  .venv/bin/mlflow ui --backend-store-uri {tracking} -p 5000")
    print(f"  Serve it:     MLFLOW_TRACKING_URI={tracking} .venv/bin/mlflow models serve "
          f"-m {uri} --env-manager local -p 5001")
    print(f"  Promote it:   in the UI, open '{MODEL_NAME}' version {keras_version.version} and set "
          "the alias 'champion' (or: .venv/bin/mlflow-tflite-keras verify "
          f"models:/{MODEL_NAME}@candidate)")
    print("  Query it:     curl -s localhost:5001/invocations -H 'Content-Type: application/json'"
          " -d '{\"inputs\": [[[[0.0]]]]}'  # shape [N, 8, 8, 1]")


if __name__ == "__main__":
    main()
