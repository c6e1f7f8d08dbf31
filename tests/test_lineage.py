"""register_keras_version: a Keras version next to the .tflite version, lineage both ways.

Runs against the embedded SQLite store and against real `mlflow server` processes on SQLite
and on PostgreSQL backend stores.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import flavor_models as fm
import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow_tflite_keras import ParityCheckError, lineage
from servers import tracking_server


pytestmark = pytest.mark.slow  # servers, and a conversion with its parity check per test


@pytest.fixture(scope="module", params=["sqlite", "server", "postgres"])
def store(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    if request.param == "postgres":  # a team's shared server: PostgreSQL backend store
        mlflow.set_tracking_uri(request.getfixturevalue("postgres_tracking_server"))
        mlflow.set_experiment("lineage")
        yield request.param
    elif request.param == "sqlite":
        from mlflow_tflite_keras.tracking import experiment, use_default_tracking

        os.environ.pop("MLFLOW_TRACKING_URI", None)
        use_default_tracking(root / ".mlflow")
        mlflow.set_experiment(experiment_id=experiment("lineage"))
        yield request.param
    else:
        with tracking_server(root, root / "server.log") as url:
            mlflow.set_tracking_uri(url)
            mlflow.set_experiment("lineage")
            yield request.param
    mlflow.set_tracking_uri(None)
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)


def log_source(name, recipe="full-int8"):
    x = fm.digits()[0]
    with mlflow.start_run(run_name="log-source") as run:
        info = mlflow.tflite_keras.log_model(fm.cnn(recipe), name="model",
                                             registered_model_name=name, input_example=x[:4])
    return info, run.info.run_id


def test_convert_registers_keras_version_next_to_source(store):
    name = f"digits-{store}"
    info, source_run = log_source(name)
    version = lineage.register_keras_version(f"models:/{name}/1", alias="candidate")
    client = MlflowClient()
    assert (version.name, str(version.version)) == (name, "2")
    tags = version.tags
    assert tags[lineage.ROLE] == "reconstructed-keras"
    assert tags[lineage.METHOD] == "reconstructed"
    assert tags[lineage.SOURCE_URI] == f"models:/{name}/1"
    assert tags[lineage.PARENT] == f"{name}/1"
    assert tags[lineage.CHAIN] == f"{name}/1 -> {name}/2"
    assert tags[lineage.SOURCE_SHA256] == mlflow.tflite_keras.load_model(
        f"models:/{name}/1").model.sha256
    assert tags[lineage.PARITY_PASSED] == "1"
    # Only the tags people filter on; the figures are in the run and the description.
    assert sorted(tags) == sorted([lineage.ROLE, lineage.METHOD, lineage.SOURCE_URI,
                                   lineage.SOURCE_SHA256, lineage.PARENT, lineage.CHAIN,
                                   lineage.PARITY_PASSED])
    assert "Parity against the LiteRT interpreter" in version.description
    assert f"Source run: `{source_run}`" in version.description
    assert f"version **1** of `{name}`" in version.description
    assert str(client.get_model_version_by_alias(name, "candidate").version) == "2"
    # The source points at its Keras version, on the version and on the logged model.
    source = client.get_model_version(name, "1")
    assert source.tags[lineage.KERAS_VERSIONS] == f"{name}/2"
    assert source.tags[lineage.ROLE] == "source-tflite"
    assert client.get_logged_model(info.model_id).tags[lineage.KERAS_VERSIONS] == f"{name}/2"
    # The conversion run: metrics, artifacts, and the Keras logged model's tags.
    run = client.get_run(version.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["parity_passed"] == 1.0
    assert run.data.metrics["parity_cosine"] > 0.95
    assert f"Conversion run: `{run.info.run_id}`" in version.description
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"parity_report.json", "conversion_report.json"} <= artifacts
    report = json.loads(mlflow.artifacts.load_text(
        f"runs:/{run.info.run_id}/conversion_report.json"))
    assert report["quantization"] == "full-int8" and report["layers"]
    keras_logged = client.get_logged_model(lineage.model_id_of(version))
    assert keras_logged.tags[lineage.SOURCE_URI] == f"models:/{name}/1"
    # Keras users load it natively, and it predicts like the .tflite within parity.
    keras_model = mlflow.keras.load_model(f"models:/{name}/2")
    x = fm.digits()[0][:16]
    tflite_scores = mlflow.pyfunc.load_model(f"models:/{name}/1").predict(x)
    keras_scores = np.asarray(keras_model.predict(x, verbose=0))
    assert np.mean(tflite_scores.argmax(-1) == keras_scores.argmax(-1)) >= 0.9
    # The model is trained: confident, input-dependent scores that a constant cannot match.
    assert np.mean(keras_scores.argmax(-1) == fm.digits()[1][:16]) >= 0.8
    np.testing.assert_allclose(keras_scores, tflite_scores, atol=0.03)


def test_two_conversions_are_both_linked(store):
    name = f"twice-{store}"
    log_source(name, "float32")
    first = lineage.register_keras_version(f"models:/{name}/1")
    second = lineage.register_keras_version(f"models:/{name}/1")
    assert (str(first.version), str(second.version)) == ("2", "3")
    assert lineage.keras_versions_of(name, 1) == [f"{name}/2", f"{name}/3"]


def test_failed_parity_leaves_nothing_behind(store):
    name = f"strict-{store}"
    log_source(name, "full-int8")
    client = MlflowClient()
    before = client.get_model_version(name, "1").tags
    with pytest.raises(ParityCheckError, match="Parity check failed"):
        lineage.register_keras_version(f"models:/{name}/1",
                                       tolerances={"max_abs_error": 0.0, "min_cosine": 1.01})
    assert [str(mv.version) for mv in client.search_model_versions(f"name = '{name}'")] == ["1"]
    assert client.get_model_version(name, "1").tags == before
    failed = mlflow.search_runs(filter_string="attributes.status = 'FAILED'",
                                search_all_experiments=True, output_format="list")
    reasons = [r.data.tags.get("tflite_keras.failure", "") for r in failed]
    assert any("Parity check failed" in r for r in reasons)


def test_other_registered_name_and_alias_uri(store):
    name = f"src-{store}"
    log_source(name, "float32")
    MlflowClient().set_registered_model_alias(name, "prod", "1")
    version = lineage.register_keras_version(f"models:/{name}@prod",
                                             registered_model_name=f"{name}-keras")
    assert (version.name, str(version.version)) == (f"{name}-keras", "1")
    assert version.tags[lineage.PARENT] == f"{name}/1"
    assert lineage.keras_versions_of(name, 1) == [f"{name}-keras/1"]


def test_unregistered_source_needs_a_name(store):
    with mlflow.start_run():
        info = mlflow.tflite_keras.log_model(fm.cnn(), name="model")
    with pytest.raises(MlflowException, match="Pass registered_model_name to choose"):
        lineage.register_keras_version(info.model_uri)
    version = lineage.register_keras_version(info.model_uri,
                                             registered_model_name=f"from-run-{store}")
    assert version.tags[lineage.SOURCE_URI] == info.model_uri


def test_kept_keras_source_is_registered(store):
    """Route (c): a Keras model logged with the flavor keeps its source; the Keras version is
    that original (method=kept-source), predicting exactly like it; reconstruction on demand."""
    import keras

    name = f"kept-{store}"
    x = fm.digits()[0]
    original = fm.make_cnn()
    with mlflow.start_run():
        info = mlflow.tflite_keras.log_model(original, name="model", recipe="int8",
                                             representative_data=x[:64], input_example=x[:8],
                                             registered_model_name=name)
    loaded = mlflow.tflite_keras.load_model(info.model_uri)
    assert loaded.model.quantization_kind == "full-int8"
    assert loaded.flavor_conf["keras_source"]["recipe"] == "full-int8"
    assert loaded.flavor_conf["keras_source"]["keras_version"] == keras.__version__
    version = lineage.register_keras_version(f"models:/{name}/1", parity_inputs=x[:64])
    assert version.tags[lineage.METHOD] == "kept-source"
    assert "Original Keras model" in version.description
    kept = mlflow.keras.load_model(f"models:/{name}/{version.version}")
    np.testing.assert_array_equal(kept.predict(x[:16], verbose=0),
                                  original.predict(x[:16], verbose=0))
    rebuilt = lineage.register_keras_version(f"models:/{name}/1", method="reconstructed",
                                             parity_inputs=x[:64])
    assert rebuilt.tags[lineage.METHOD] == "reconstructed"
    assert lineage.keras_versions_of(name, 1) == [f"{name}/2", f"{name}/3"]


def test_kept_source_missing_is_a_clear_error(store):
    name = f"nokept-{store}"
    log_source(name, "float32")
    with pytest.raises(MlflowException, match="has no Keras source"):
        lineage.register_keras_version(f"models:/{name}/1", method="kept-source")
    assert [str(mv.version) for mv in
            MlflowClient().search_model_versions(f"name = '{name}'")] == ["1"]


def test_served_keras_version_matches_served_tflite(tmp_path):
    """Both versions behind real `mlflow models serve` processes: same numbers within parity.
    The Keras version loads natively through mlflow.keras (this package's layers register
    themselves when Keras is imported)."""
    import json

    import requests

    from mlflow_tflite_keras.tracking import experiment, use_default_tracking
    from servers import clean_env, model_server

    os.environ.pop("MLFLOW_TRACKING_URI", None)
    uri = use_default_tracking(tmp_path / ".mlflow")
    mlflow.set_experiment(experiment_id=experiment("serve-both"))
    try:
        name = "served"
        log_source(name, "full-int8")
        x = fm.digits()[0]
        lineage.register_keras_version(f"models:/{name}/1", parity_inputs=x[:64])
        env = clean_env(MLFLOW_TRACKING_URI=uri)
        batch = x[100:108]
        answers = {}
        for version in ("1", "2"):
            with model_server(f"models:/{name}/{version}", tmp_path / f"v{version}.log",
                              env=env) as url:
                response = requests.post(url + "/invocations",
                                         data=json.dumps({"inputs": batch.tolist()}),
                                         headers={"Content-Type": "application/json"},
                                         timeout=120)
                assert response.status_code == 200, response.text
                answers[version] = np.asarray(response.json()["predictions"], np.float32)
        assert answers["1"].shape == answers["2"].shape == (8, 10)
        np.testing.assert_allclose(answers["2"], answers["1"], atol=0.03)
        assert np.mean(answers["1"].argmax(-1) == answers["2"].argmax(-1)) >= 0.875
        assert np.mean(answers["2"].argmax(-1) == fm.digits()[1][100:108]) >= 0.75
    finally:
        mlflow.set_tracking_uri(None)
        os.environ.pop("MLFLOW_EXPERIMENT_ID", None)


def test_source_deleted_during_conversion_is_refused_and_rolled_back(store, monkeypatch):
    """The source's registered model is deleted while the conversion runs: register_model
    would re-create it and the Keras version would become its version 1, pointing at itself.
    The registration is refused and undone: no registered model, a FAILED run."""
    from mlflow_tflite_keras.converter import parity

    name = f"vanishing-{store}"
    info, _ = log_source(name, "float32")
    client = MlflowClient()
    real_check = parity.check_parity

    def delete_source_then_check(*args, **kwargs):
        client.delete_registered_model(name)  # another user, mid-conversion
        return real_check(*args, **kwargs)

    monkeypatch.setattr(parity, "check_parity", delete_source_then_check)
    with pytest.raises(MlflowException, match="was deleted while it was being converted") as e:
        lineage.register_keras_version(f"models:/{name}/1")
    assert e.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    assert client.search_registered_models(f"name = '{name}'") == []
    assert client.search_model_versions(f"name = '{name}'") == []
    # The source logged model names no Keras version.
    assert lineage.KERAS_VERSIONS not in client.get_logged_model(info.model_id).tags
    failed = mlflow.search_runs(filter_string="attributes.status = 'FAILED'",
                                search_all_experiments=True, output_format="list")
    assert any("was deleted while it was being converted" in
               r.data.tags.get("tflite_keras.failure", "") for r in failed)


def test_lists_written_before_per_version_tags_are_kept(store):
    """A source linked by an earlier release (the list tag only) keeps its entries."""
    name = f"legacy-{store}"
    info, _ = log_source(name, "float32")
    client = MlflowClient()
    client.set_model_version_tag(name, "1", lineage.KERAS_VERSIONS, "older/7")
    client.set_logged_model_tags(info.model_id, {lineage.KERAS_VERSIONS: "older/7"})
    version = lineage.register_keras_version(f"models:/{name}/1")
    expected = sorted(["older/7", f"{name}/{version.version}"], key=lineage._ref_order)
    assert lineage.keras_versions_of(name, 1) == expected
    assert client.get_logged_model(info.model_id).tags[lineage.KERAS_VERSIONS] == \
        ",".join(expected)
