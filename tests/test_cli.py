"""The `mlflow-tflite-keras` CLI and the MLproject entry points, as real processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import flavor_models as fm
from servers import clean_env

REPO = Path(__file__).resolve().parent.parent
CLI = str(Path(sys.executable).with_name("mlflow-tflite-keras"))
MLFLOW = str(Path(sys.executable).with_name("mlflow"))


def run(args, env, cwd=None, timeout=600):
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=timeout)


@pytest.fixture
def env(tmp_path):
    return clean_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")


@pytest.fixture
def int8_file(tmp_path):
    path = tmp_path / "digits_int8.tflite"
    path.write_bytes(fm.cnn("full-int8"))
    return path


def test_help_explains_each_command(env):
    result = run([CLI, "--help"], env)
    assert result.returncode == 0
    for command in ("inspect", "log", "convert", "verify"):
        assert command in result.stdout
        sub = run([CLI, command, "--help"], env)
        assert sub.returncode == 0 and len(sub.stdout) > 100


def test_inspect_file(int8_file, env):
    result = run([CLI, "inspect", str(int8_file)], env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "quantization  full-int8" in out and "CONV_2D" in out and "ok" in out
    assert "q(scale=" in out
    as_json = json.loads(run([CLI, "inspect", str(int8_file), "--json"], env).stdout)
    assert as_json["quantization"] == "full-int8"
    assert as_json["unsupported_operators"] == []


def test_inspect_bad_file_exit_code(tmp_path, env):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a model at all, not even close")
    result = run([CLI, "inspect", str(bad), "--no-converter"], env)
    assert result.returncode == 2
    assert "Error: Not a TFLite model" in result.stderr and "Traceback" not in result.stderr


def test_log_convert_verify(int8_file, env):
    logged = run([CLI, "log", str(int8_file), "--registered-model-name", "digits"], env)
    assert logged.returncode == 0, logged.stderr
    assert "registered: models:/digits/1" in logged.stdout
    converted = run([CLI, "convert", "models:/digits/1", "--alias", "champion"], env)
    assert converted.returncode == 0, converted.stderr
    assert "registered: models:/digits/2" in converted.stdout
    assert "parity_passed: 1" in converted.stdout
    assert "Checking parity" in converted.stderr  # progress for long steps
    verified = run([CLI, "verify", "models:/digits@champion"], env)
    assert verified.returncode == 0, verified.stderr
    assert "parity PASSED" in verified.stdout
    strict = run([CLI, "convert", "models:/digits/1", "--min-cosine", "1.01"], env)
    assert strict.returncode == 1 and "Parity check failed" in strict.stderr
    wrapped = run([CLI, "convert", "models:/digits/1", "--wrap-op", "SOFTMAX"], env)
    assert wrapped.returncode == 0, wrapped.stderr
    assert "registered: models:/digits/3" in wrapped.stdout
    description = subprocess.run([sys.executable, "-c", (
        "import mlflow; print(mlflow.MlflowClient().get_model_version('digits', '3')"
        ".description)")], capture_output=True, text=True, env=env).stdout
    assert "frozen TFLiteLayers" in description and "SOFTMAX" in description
    not_keras = run([CLI, "verify", "models:/digits/1"], env)
    assert not_keras.returncode == 2 and "not a Keras version" in not_keras.stderr


def test_mlflow_run_entry_points(int8_file, env):
    logged = run([MLFLOW, "run", str(REPO), "-e", "log", "-P", f"path={int8_file}",
                  "-P", "registered_model_name=proj", "--env-manager", "local"], env)
    assert logged.returncode == 0, logged.stderr[-3000:]
    converted = run([MLFLOW, "run", str(REPO), "-e", "convert", "-P", "model_uri=models:/proj/1",
                     "-P", "alias=champion", "--env-manager", "local"], env)
    assert converted.returncode == 0, converted.stderr[-3000:]
    check = run([sys.executable, "-c", (
        "import mlflow; c = mlflow.MlflowClient();"
        "mv = c.get_model_version_by_alias('proj', 'champion');"
        "print(mv.version, mv.tags['tflite_keras.role'])")], env)
    assert check.stdout.split() == ["2", "reconstructed-keras"], check.stderr


NATIVE_LOG_PREFIXES = ("E0000", "W0000", "I0000")


def _custom_op_tflite() -> bytes:
    """ABS -> RELU with ABS turned into a custom op the converter cannot rebuild."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    from converter.handmade import FlatModel

    b = FlatModel()
    x, h, y = b.input((1, 4)), b.intermediate((1, 4)), b.output((1, 4))
    b.op("ABS", [x], [h])
    b.op("RELU", [h], [y])
    model = schema.ModelT.InitFromPackedBuf(bytearray(b.finish()), 0)
    code = model.operatorCodes[model.subgraphs[0].operators[0].opcodeIndex]
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
    code.customCode = "MyCustomOp"
    fb = flatbuffers.Builder(1024)
    fb.Finish(model.Pack(fb), file_identifier=b"TFL3")
    return bytes(fb.Output())


def _assert_quiet(result):
    noisy = [line for line in (result.stdout + result.stderr).splitlines()
             if line.startswith(NATIVE_LOG_PREFIXES) or "absl::InitializeLog" in line]
    assert not noisy, noisy


def test_inspect_missing_file_says_no_such_file(tmp_path, env):
    result = run([CLI, "inspect", str(tmp_path / "nosuch.tflite")], env)
    assert result.returncode == 2
    assert "no such file" in result.stderr and "No such artifact" not in result.stderr


def test_convert_and_finetune_refuse_a_local_file_without_a_name(int8_file, tmp_path, env):
    for command in (["convert", str(int8_file)],
                    ["finetune", str(int8_file), "--data", str(int8_file)]):
        result = run([CLI, *command], env)
        assert result.returncode == 2, result.stderr
        assert "is a local file. Pass --registered-model-name NAME" in result.stderr
        assert "models:/" in result.stderr and "registered_model_name" not in result.stderr


def test_convert_local_file_then_inspect_the_keras_version(int8_file, env):
    """A local .tflite: logged, registered, converted; `inspect` shows the Keras version's
    lineage and parity; the default output has no TensorFlow/absl C++ log lines."""
    quiet_env = {k: v for k, v in env.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    converted = run([CLI, "convert", str(int8_file), "--registered-model-name", "det"],
                    quiet_env)
    assert converted.returncode == 0, converted.stderr
    assert "registered: models:/det/1 (the .tflite)" in converted.stdout
    assert "registered: models:/det/2" in converted.stdout
    assert "parity_passed: 1" in converted.stdout
    _assert_quiet(converted)

    inspected = run([CLI, "inspect", "models:/det/2"], quiet_env)
    assert inspected.returncode == 0, inspected.stderr
    out = inspected.stdout
    assert "flavors       keras, python_function" in out
    assert "tflite_keras.lineage             det/1 -> det/2" in out
    assert "tflite_keras.role                reconstructed-keras" in out
    assert "parity        PASSED" in out and "parity_cosine" in out
    _assert_quiet(inspected)
    as_json = json.loads(run([CLI, "inspect", "models:/det/2", "--json"], quiet_env).stdout)
    assert as_json["registry"]["tags"]["tflite_keras.parent"] == "det/1"
    assert as_json["parity"]["parity_passed"] == 1.0

    source = run([CLI, "inspect", "models:/det/1", "--no-converter"], quiet_env)
    assert source.returncode == 0, source.stderr
    assert "quantization  full-int8" in source.stdout
    assert "tflite_keras.keras_versions      det/2" in source.stdout

    verbose = run([CLI, "inspect", str(int8_file), "--verbose"], quiet_env)
    assert verbose.returncode == 0, verbose.stderr
    assert any(line.startswith(NATIVE_LOG_PREFIXES) for line in verbose.stderr.splitlines())


def test_errors_name_cli_flags(int8_file, tmp_path, env):
    # An unregistered source: the flag that chooses where the Keras version goes.
    logged = run([CLI, "log", str(int8_file)], env)
    assert logged.returncode == 0, logged.stderr
    model_uri = logged.stdout.split("model_uri: ")[1].split()[0]
    unregistered = run([CLI, "convert", model_uri], env)
    assert unregistered.returncode == 2
    assert "Pass --registered-model-name NAME to choose the registered model" in \
        unregistered.stderr
    assert "registered_model_name" not in unregistered.stderr
    # Operators the converter cannot rebuild: exit 3, and the flag that wraps them.
    custom = tmp_path / "custom.tflite"
    custom.write_bytes(_custom_op_tflite())
    unsupported = run([CLI, "convert", str(custom), "--registered-model-name", "custom"], env)
    assert unsupported.returncode == 3, unsupported.stderr
    assert "CUSTOM:MyCustomOp x1" in unsupported.stderr
    assert "Pass --unsupported wrap to run them as embedded, frozen TFLiteLayers" in \
        unsupported.stderr
    assert "unsupported='wrap'" not in unsupported.stderr


def test_interface_change_names_the_flag(capsys):
    from mlflow_tflite_keras import InterfaceChangedError, compare_interfaces
    from mlflow_tflite_keras.cli import _fail

    report = compare_interfaces(fm.cnn("float32"), fm.cnn("full-int8"))
    assert report.differences
    error = InterfaceChangedError(report)
    assert "Pass allow_interface_changes=True to accept" in error.message
    with pytest.raises(SystemExit) as exited:
        _fail(error)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "Pass --allow-interface-changes to accept these changes." in err
    assert "allow_interface_changes" not in err
