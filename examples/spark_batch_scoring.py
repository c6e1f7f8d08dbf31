"""Batch scoring a registered ``.tflite`` model on Spark with ``mlflow.pyfunc.spark_udf``.

1. Train a small digits CNN, convert it to a full-int8 ``.tflite``, log and register it.
2. Start a local Spark session (``local[2]``) and build a DataFrame of 8x8 images, stored as a
   nested ``array<array<array<float>>>`` column as image data usually arrives.
3. Score it with ``spark_udf(spark, "models:/digits-spark/<v>")`` and check that the results
   equal ``mlflow.pyfunc.load_model(...).predict`` on the same rows.

Uses ``MLFLOW_TRACKING_URI`` when set, else ``./.mlflow/mlflow.db``. Needs Java 17 or 21
(``JAVA_HOME``, ``java`` on PATH, or a JDK in /usr/lib/jvm).
Run: .venv/bin/python examples/spark_batch_scoring.py
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import numpy as np  # noqa: E402

import mlflow  # noqa: E402
from mlflow_tflite_keras.tracking import experiment, use_default_tracking  # noqa: E402

MODEL_NAME = "digits-spark"


def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype(np.float32)[..., None], d.target.astype(np.int64)


def train_tflite(x, y) -> bytes:
    import keras

    from mlflow_tflite_keras import keras_to_tflite

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=15, batch_size=32, verbose=0)
    return keras_to_tflite(model, "full-int8", representative_data=x[:200])


def spark_session():
    if not os.environ.get("JAVA_HOME") and not shutil.which("java"):
        jvms = sorted(Path("/usr/lib/jvm").glob("*/bin/java"))
        if not jvms:
            sys.exit("Spark needs Java 17 or 21: install one (e.g. apt-get install "
                     "default-jre-headless) or set JAVA_HOME.")
        os.environ["JAVA_HOME"] = str(jvms[0].parent.parent)
    # Spark's Python workers must use this interpreter (numpy, pandas, LiteRT, mlflow).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    spark = (SparkSession.builder.master("local[2]").appName("tflite-batch-scoring")
             .config("spark.ui.enabled", "false")
             .config("spark.ui.showConsoleProgress", "false")
             .config("spark.sql.shuffle.partitions", "2")
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def main():
    import pandas as pd
    from pyspark.sql import functions as F

    print(f"Tracking URI: {use_default_tracking()}")
    mlflow.set_experiment(experiment_id=experiment("tflite-keras-spark"))
    x, y = digits()
    print("Training a digits CNN and converting it to full-int8 .tflite ...")
    with mlflow.start_run(run_name="log-digits-spark"):
        info = mlflow.tflite_keras.log_model(train_tflite(x[:1400], y[:1400]), name="model",
                                             registered_model_name=MODEL_NAME)
    model_uri = f"models:/{MODEL_NAME}/{info.registered_model_version}"
    print(f"Registered {model_uri}")

    start = time.monotonic()
    spark = spark_session()
    print(f"Spark {spark.version} up in {time.monotonic() - start:.1f}s")
    try:
        images = spark.createDataFrame(
            pd.DataFrame({"id": np.arange(len(x)), "image": [img.tolist() for img in x],
                          "label": y}),
            schema="id long, image array<array<array<float>>>, label long")

        # Tensor signatures take one flat array column per input (reshaped to [-1, 8, 8, 1] in
        # C order), and the result type is given per row: a [-1, 10] output -> array<float>.
        predict = mlflow.pyfunc.spark_udf(spark, model_uri, result_type="array<float>",
                                          env_manager="local")
        scored = (images
                  .withColumn("probabilities", predict(F.flatten(F.flatten("image"))))
                  .withColumn("predicted", F.expr("array_position(probabilities, "
                                                  "array_max(probabilities)) - 1")))
        start = time.monotonic()
        result = scored.select("id", "label", "probabilities", "predicted").orderBy("id").toPandas()
        print(f"Scored {len(result)} rows on Spark in {time.monotonic() - start:.1f}s")
        scored.select("id", "label", "predicted").show(5)

        held_out = result[result.id >= 1400]
        print(f"Held-out accuracy: {np.mean(held_out.predicted == held_out.label):.3f}")
        expected = mlflow.pyfunc.load_model(model_uri).predict(x)
        got = np.asarray(result.probabilities.tolist(), dtype=np.float32)
        np.testing.assert_array_equal(got, expected)
        print("Spark results equal mlflow.pyfunc.load_model(...).predict on the same rows.")
    finally:
        spark.stop()


if __name__ == "__main__":
    main()
