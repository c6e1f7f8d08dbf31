"""``mlflow.pyfunc.spark_udf`` on local Spark scores like the pyfunc.

MLflow 3.17's spark_udf, for tensor signatures, takes one *flat* (1-D) array column per input and
reshapes it to the signature's shape in C order; the result type must be given per row
(``"array<float>"`` for a [-1, k] output: the inferred default maps the batch dimension too).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import flavor_models as fm
import mlflow
from mlflow_tflite_keras import flavor

pytestmark = pytest.mark.slow


def find_java_home() -> str | None:
    """JAVA_HOME, else the JDK behind ``java`` on PATH, else one in /usr/lib/jvm (17 or 21
    first: the versions Spark 4 supports)."""
    if os.environ.get("JAVA_HOME"):
        return os.environ["JAVA_HOME"]
    if java := shutil.which("java"):
        return str(Path(java).resolve().parent.parent)
    jvms = sorted(Path("/usr/lib/jvm").glob("*/bin/java"),
                  key=lambda p: ("17" not in p.parts[-3] and "21" not in p.parts[-3], str(p)))
    return str(jvms[0].parent.parent) if jvms else None


@pytest.fixture(scope="module")
def spark():
    java_home = find_java_home()
    if java_home is None:
        pytest.skip("no Java runtime (`make test` installs default-jre-headless when root)")
    os.environ["JAVA_HOME"] = java_home
    # Python workers must run this interpreter (with numpy, pandas, LiteRT), not `python3`.
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    from pyspark.sql import SparkSession

    session = (SparkSession.builder.master("local[2]").appName("test-spark")
               .config("spark.ui.enabled", "false")
               .config("spark.sql.shuffle.partitions", "2")
               .config("spark.driver.memory", "1g")
               .config("spark.sql.execution.arrow.maxRecordsPerBatch", "16")
               .getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def collect(df, column) -> np.ndarray:
    return np.asarray(df.select(column).toPandas().iloc[:, 0].tolist(), dtype=np.float32)


def test_image_array_columns(spark, tmp_path):
    """The full-int8 digits CNN ([-1, 8, 8, 1] -> [-1, 10]): flat and nested array columns."""
    from pyspark.sql import functions as F

    path = str(tmp_path / "cnn")
    flavor.save_model(fm.cnn("full-int8"), path)
    x = fm.digits()[0][:40].astype(np.float32)
    expected = mlflow.pyfunc.load_model(path).predict(x)

    df = spark.createDataFrame(
        pd.DataFrame({"id": range(len(x)), "flat": [r.ravel().tolist() for r in x],
                      "image": [r.tolist() for r in x]}),
        schema="id long, flat array<float>, image array<array<array<float>>>").repartition(2)
    udf = mlflow.pyfunc.spark_udf(spark, path, result_type="array<float>")
    scored = (df.withColumn("from_flat", udf("flat"))
                .withColumn("from_nested", udf(F.flatten(F.flatten("image"))))
                .orderBy("id"))
    np.testing.assert_array_equal(collect(scored, "from_flat"), expected)
    np.testing.assert_array_equal(collect(scored, "from_nested"), expected)


def test_nested_column_without_signature(spark, tmp_path):
    """No signature, no schema enforcement: the pyfunc itself stacks nested Spark arrays."""
    path = str(tmp_path / "cnn")
    flavor.save_model(fm.cnn("full-int8"), path, signature=False)
    x = fm.digits()[0][:12].astype(np.float32)
    expected = mlflow.pyfunc.load_model(path).predict(x)
    df = spark.createDataFrame(pd.DataFrame({"image": [r.tolist() for r in x],
                                             "flat": [r.ravel().tolist() for r in x]}),
                               schema="image array<array<array<float>>>, flat array<float>")
    udf = mlflow.pyfunc.spark_udf(spark, path, result_type="array<float>")
    np.testing.assert_array_equal(collect(df, udf("image")), expected)
    np.testing.assert_array_equal(collect(df, udf("flat")), expected)


def test_tabular_columns_from_registry(spark, tmp_path):
    """5 float columns -> [-1, 2], logged and registered, scored via ``models:/name/1``."""
    from pyspark.sql import functions as F

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        experiment = mlflow.create_experiment("spark", (tmp_path / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment):
            flavor.log_model(fm.tabular(), name="model", registered_model_name="tabular")
        x = np.random.default_rng(0).normal(size=(30, 5)).astype(np.float32)
        expected = mlflow.pyfunc.load_model("models:/tabular/1").predict(x)
        columns = list("abcde")
        df = spark.createDataFrame(pd.DataFrame(x, columns=columns),
                                   schema=", ".join(f"{c} float" for c in columns))
        udf = mlflow.pyfunc.spark_udf(spark, "models:/tabular/1", result_type="array<float>")
        got = collect(df, udf(F.array(*columns)))
        assert got.shape == (30, 2)
        np.testing.assert_array_equal(got, expected)
    finally:
        mlflow.set_tracking_uri(None)


def test_multi_output_struct(spark, tmp_path):
    """Two named inputs (array columns, in signature order) -> a struct of two outputs."""
    path = str(tmp_path / "multi")
    flavor.save_model(fm.multi_io(), path)
    rng = np.random.default_rng(0)
    feeds = {"image": rng.uniform(0, 1, (10, 8, 8, 1)).astype(np.float32),
             "extra": rng.uniform(0, 1, (10, 4)).astype(np.float32)}
    pyfunc = mlflow.pyfunc.load_model(path)
    expected = pyfunc.predict(feeds)
    names = pyfunc.metadata.get_input_schema().input_names()
    df = spark.createDataFrame(
        pd.DataFrame({n: [r.ravel().tolist() for r in feeds[n]] for n in names}),
        schema=", ".join(f"{n} array<float>" for n in names))
    udf = mlflow.pyfunc.spark_udf(spark, path,
                                  result_type="struct<scores: array<float>, value: array<float>>")
    got = df.select(udf(*names).alias("out")).select("out.*").toPandas()
    for name in ("scores", "value"):
        np.testing.assert_array_equal(np.asarray(got[name].tolist(), np.float32), expected[name])
