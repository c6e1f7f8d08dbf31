"""Bad input through the pyfunc: NaN / inf, empty and ragged batches, wrong dtypes, and large
batches that run in bounded-size chunks with results equal to one big invoke."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import flavor_models as fm
from flavor_models import images, multi_feeds
import mlflow
from mlflow.exceptions import MlflowException
from mlflow_tflite_keras import flavor, runtime
from mlflow_tflite_keras.runtime import TFLiteRunner
from mlflow_tflite_keras.tflite_model import TFLiteModel


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-input")
    models = {"cnn": fm.cnn(), "int8": fm.cnn("full-int8"), "multi": fm.multi_io(),
              "fixed": fm.fixed_batch_cnn()}
    for name, data in models.items():
        flavor.save_model(data, root / name)
    return root


def pyfunc(saved, name):
    return mlflow.pyfunc.load_model(str(saved / name))




# ---- NaN / inf ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_pass_through_float_inputs(saved, value):
    model = pyfunc(saved, "cnn")
    x = images(4)
    clean = model.predict(x)
    x[1, 3, 3, 0] = value
    out = model.predict(x)
    assert out.shape == (4, 10)
    # Rows are independent: the poisoned row is not finite, the others are unchanged.
    assert not np.all(np.isfinite(out[1]))
    np.testing.assert_array_equal(out[[0, 2, 3]], clean[[0, 2, 3]])


def test_nan_and_inf_in_one_input_of_a_multi_input_model(saved):
    feeds = multi_feeds(3)
    feeds["extra"][2, 0] = np.inf
    out = pyfunc(saved, "multi").predict(feeds)
    assert set(out) == {"scores", "value"}
    assert np.all(np.isfinite(out["scores"][:2])) and not np.all(np.isfinite(out["scores"][2]))


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_into_quantized_input_is_a_clear_error(saved, value):
    x = images(3)
    x[2, 0, 0, 0] = value
    with pytest.raises(MlflowException, match="NaN or infinite") as e:
        pyfunc(saved, "int8").predict(x)
    assert e.value.error_code == "INVALID_PARAMETER_VALUE"


def test_huge_finite_values_into_quantized_input_saturate(saved):
    x = images(2)
    x[0] = 1e30
    x[1] = -1e30
    out = pyfunc(saved, "int8").predict(x)
    assert out.shape == (2, 10) and np.all(np.isfinite(out))


# ---- empty, ragged, mismatched -----------------------------------------------------------------


@pytest.mark.parametrize("name, feeds", [
    ("cnn", np.zeros((0, 8, 8, 1), np.float32)),
    ("int8", np.zeros((0, 8, 8, 1), np.float32)),
    ("multi", {"image": np.zeros((0, 8, 8, 1), np.float32), "extra": np.zeros((0, 4), np.float32)}),
])
def test_empty_batch_is_a_clear_error(saved, name, feeds):
    with pytest.raises(MlflowException, match="(?i)empty batch|0 rows"):
        pyfunc(saved, name).predict(feeds)
    with pytest.raises(MlflowException, match="(?i)empty batch|0 rows"):
        flavor.load_model(str(saved / name)).predict(feeds)  # without schema enforcement too


def test_different_batch_sizes_per_input(saved):
    feeds = multi_feeds(3)
    feeds["extra"] = feeds["extra"][:2]
    with pytest.raises(MlflowException, match="different batch sizes"):
        flavor.load_model(str(saved / "multi")).predict(feeds)


def _ragged():
    cells = np.empty(2, dtype=object)
    cells[0], cells[1] = np.zeros((8, 8, 1)), np.zeros((8, 7, 1))
    return cells


@pytest.mark.parametrize("bad, message", [
    (_ragged(), "ragged|shape"),
    (np.array([[["x"] * 1] * 8] * 8), "dtype"),
    (np.zeros((2, 8, 8, 1), np.complex64), "dtype|without loss"),
    (np.zeros((2, 64), np.float32), "shape"),
    (np.float32(3.0), "shape|numpy array"),
    ({"image": images(1)}, "missing|unexpected"),
])
def test_malformed_arrays_are_clear_errors(saved, bad, message):
    loaded = flavor.load_model(str(saved / "cnn"))
    with pytest.raises(MlflowException, match=message):
        loaded.predict(bad)


def test_missing_and_extra_inputs_through_pyfunc(saved):
    model = pyfunc(saved, "multi")
    feeds = multi_feeds(2)
    with pytest.raises(MlflowException, match="extra"):
        model.predict({"image": feeds["image"]})
    out = model.predict({**feeds, "unused": np.zeros((2, 1), np.float32)})
    assert set(out) == {"scores", "value"}  # MLflow's schema enforcement drops extra columns
    with pytest.raises(MlflowException, match="unexpected input"):
        flavor.load_model(str(saved / "multi")).predict({**feeds, "unused": feeds["extra"]})


def test_dataframe_with_missing_column(saved):
    frame = pd.DataFrame({"image": list(images(2))})
    with pytest.raises(MlflowException, match="extra"):
        flavor.load_model(str(saved / "multi")).predict(frame)


def test_wrong_params_are_clear_errors(saved):
    with pytest.raises(MlflowException, match="signature_key"):
        flavor.load_model(str(saved / "cnn")).predict(images(1), signature_key="nope")


# ---- large batches: chunked, bounded, identical ------------------------------------------------


@pytest.fixture
def invoked_batches(monkeypatch):
    """The batch sizes each interpreter invoke saw."""
    sizes = []
    original = runtime._Session.invoke  # every invoke, allocated already or after a resize

    def invoke(self, sg, spec, arrays):
        sizes.append(int(arrays[0].shape[0]) if arrays and arrays[0].ndim else 0)
        return original(self, sg, spec, arrays)

    monkeypatch.setattr(runtime._Session, "invoke", invoke)
    return sizes


@pytest.mark.parametrize("name, data, feeds", [
    ("cnn", fm.cnn, lambda n: images(n)),
    ("int8", lambda: fm.cnn("full-int8"), lambda n: images(n)),
    ("multi", fm.multi_io, multi_feeds),
])
def test_chunked_batches_equal_one_big_invoke(invoked_batches, name, data, feeds):
    model = TFLiteModel(data())
    x = feeds(203)
    whole = TFLiteRunner(model, max_batch_bytes=None).predict(x)
    assert invoked_batches == [203]
    invoked_batches.clear()
    chunked = TFLiteRunner(model, max_batch_rows=16).predict(x)
    assert invoked_batches == [16] * 12 + [11]
    for key in whole:
        np.testing.assert_array_equal(chunked[key], whole[key])
    invoked_batches.clear()
    # A per-call override, smaller than the runner's.
    again = TFLiteRunner(model, max_batch_rows=64).predict(x, max_batch_rows=50)
    assert invoked_batches == [50, 50, 50, 50, 3]
    for key in whole:
        np.testing.assert_array_equal(again[key], whole[key])


def test_default_chunk_is_bounded_by_bytes(invoked_batches):
    model = TFLiteModel(fm.cnn())
    row_bytes = 8 * 8 * 1 * 4
    assert runtime.DEFAULT_MAX_BATCH_BYTES == 64 * 2 ** 20
    runner = TFLiteRunner(model)
    x = images(3000)
    runner.predict(x)
    assert invoked_batches == [3000]  # 750 KiB: one invoke under the 64 MiB default
    invoked_batches.clear()
    runner = TFLiteRunner(model, max_batch_bytes=100 * row_bytes + 5)
    out = runner.predict(x)
    assert invoked_batches == [100] * 30
    np.testing.assert_array_equal(out["output_0"] if "output_0" in out else
                                  next(iter(out.values())),
                                  next(iter(TFLiteRunner(model).predict(x).values())))
    # A row larger than the budget still runs, one row at a time.
    invoked_batches.clear()
    TFLiteRunner(model, max_batch_bytes=10).predict(images(3))
    assert invoked_batches == [1, 1, 1]


def test_large_batch_through_the_pyfunc(saved, invoked_batches):
    model = pyfunc(saved, "cnn")
    x = images(3000, seed=3)
    whole = model.predict(x)
    assert whole.shape == (3000, 10)
    invoked_batches.clear()
    model.get_raw_model()._runner.max_batch_rows = 256
    np.testing.assert_array_equal(model.predict(x), whole)
    assert max(invoked_batches) == 256 and sum(invoked_batches) == 3000


@pytest.mark.parametrize("value", [0, -3, "x", 2.5, True])
def test_invalid_chunk_sizes(value):
    model = TFLiteModel(fm.cnn())
    with pytest.raises(MlflowException, match="positive integer"):
        TFLiteRunner(model, max_batch_rows=value)
    with pytest.raises(MlflowException, match="positive integer"):
        TFLiteRunner(model).predict(images(2), max_batch_rows=value)


def test_max_batch_rows_through_model_config(tmp_path):
    """The chunk size reaches the pyfunc via model_config; results equal one big invoke."""
    flavor.save_model(fm.cnn("full-int8"), tmp_path / "m")
    x = np.random.default_rng(0).uniform(0, 1, (37, 8, 8, 1)).astype(np.float32)
    whole = mlflow.pyfunc.load_model(str(tmp_path / "m")).predict(x)
    chunked = mlflow.pyfunc.load_model(str(tmp_path / "m"), model_config={"max_batch_rows": 5})
    assert chunked.get_raw_model()._runner.max_batch_rows == 5
    np.testing.assert_array_equal(chunked.predict(x), whole)
