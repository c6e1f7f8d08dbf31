"""The package's shape: every module imports alone, the module graph has no circle, and a
``.tflite`` is parsed once per call chain."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from servers import clean_env

PACKAGE = "mlflow_tflite_keras"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE


def package_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (packages by their
    ``__init__``)."""
    modules = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _imported(module: str, path: Path, node, modules) -> set[str]:
    """The package modules one import statement loads (a name imported from a package is
    its ``__init__``'s; a submodule imported from it is that submodule)."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in modules}
    base = node.module or ""
    if node.level:  # relative: from the module's package
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        package = package[:len(package) - (node.level - 1)]
        base = ".".join(package + ([base] if base else []))
    found = set()
    for alias in node.names:
        if f"{base}.{alias.name}" in modules:
            found.add(f"{base}.{alias.name}")
        elif base in modules:
            found.add(base)
    return found


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the package modules it imports, at module level or inside functions (a
    lazy import still ties two modules together). A module's own ancestors, which Python
    imports before it anyway, are left out."""
    graph = {}
    for module, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges |= _imported(module, path, node, modules)
        graph[module] = {m for m in edges if m != module and not module.startswith(m + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of the graph (its modules, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_module_graph_has_no_circle():
    modules = package_modules()
    graph = import_graph(modules)
    assert {"mlflow_tflite_keras.recipes", "mlflow_tflite_keras.interface",
            "mlflow_tflite_keras.flavor"} <= set(graph)
    assert "mlflow_tflite_keras.flavor" in graph["mlflow_tflite_keras.export"]  # edges found
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_circle():
    """The check above rejects a wrong answer: the circle this refactor removed is found."""
    graph = import_graph(package_modules())
    graph["mlflow_tflite_keras.flavor"] = graph["mlflow_tflite_keras.flavor"] | {
        "mlflow_tflite_keras.export"}
    cycle = find_cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1]
    assert {"mlflow_tflite_keras.flavor", "mlflow_tflite_keras.export"} <= set(cycle)
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_recipes_is_a_leaf_and_the_flatbuffer_reader_needs_no_converter():
    graph = import_graph(package_modules())
    assert graph["mlflow_tflite_keras.recipes"] == set()
    assert graph["mlflow_tflite_keras.tflite_model"] == {"mlflow_tflite_keras.recipes"}


def test_every_module_imports_alone():
    """Each module imported first, with none of the package loaded (third-party libraries
    stay loaded between modules, so the loop is quick; a circle or an order dependency
    between the package's own modules would fail here)."""
    modules = sorted(package_modules())
    code = f"""
import importlib, json, sys, traceback
import numpy, mlflow, keras  # loaded once: only the package's own modules are re-imported
failures = []
for name in {modules!r}:
    for loaded in [m for m in sys.modules if m == {PACKAGE!r} or m.startswith({PACKAGE!r} + ".")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except BaseException:
        failures.append([name, traceback.format_exc(limit=-3)])
print(json.dumps(failures))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=600, env=clean_env(), cwd=str(ROOT.parent))
    assert result.returncode == 0, result.stderr[-3000:]
    failures = json.loads(result.stdout.strip().splitlines()[-1])
    assert not failures, "\n\n".join(f"{name}:\n{trace}" for name, trace in failures)


# ---- a .tflite is parsed once per call chain ---------------------------------------------------


def test_log_model_parses_once(tracking, count_parses):
    import flavor_models as fm
    import mlflow

    data = fm.cnn()
    with mlflow.start_run():
        info = mlflow.tflite_keras.log_model(data, name="model")
    assert count_parses.of(data) == 1, count_parses
    # Loading reads only what the runtime needs (validated at save): no second full parse,
    # until the parsed model is asked for.
    loaded = mlflow.tflite_keras.load_model(info.model_uri)
    assert loaded.model_bytes == data and count_parses.of(data) == 1, count_parses
    assert loaded.model.sha256 and count_parses.of(data) == 2


def test_log_model_takes_a_parsed_model_and_does_not_parse_it(tracking, count_parses):
    import flavor_models as fm
    import mlflow

    from mlflow_tflite_keras import TFLiteModel

    model = TFLiteModel(fm.cnn())
    with mlflow.start_run():
        info = mlflow.tflite_keras.log_model(model, name="model")
    assert count_parses.of(model.model_bytes) == 1  # TFLiteModel(...) above
    assert mlflow.tflite_keras.load_model(info.model_uri).model_bytes == model.model_bytes


def test_save_model_takes_a_parsed_model(tmp_path, count_parses):
    import flavor_models as fm
    import mlflow

    from mlflow_tflite_keras import TFLiteModel

    model = TFLiteModel(fm.cnn())
    mlflow.tflite_keras.save_model(model, tmp_path / "m")
    assert count_parses.of(model.model_bytes) == 1
    assert (tmp_path / "m" / "model.tflite").read_bytes() == model.model_bytes
    with pytest.raises(Exception, match="recipe and representative_data"):
        mlflow.tflite_keras.save_model(model, tmp_path / "n", recipe="float16")


def test_the_parse_counter_counts(count_parses):
    """The counter rejects a wrong answer: a chain that parses twice is seen twice."""
    import flavor_models as fm

    from mlflow_tflite_keras import TFLiteModel

    data = fm.cnn()
    TFLiteModel(data), TFLiteModel.load(data), TFLiteModel.load(TFLiteModel(data))
    assert count_parses.of(data) == 3 and count_parses.total == 3


def test_convert_check_and_export_take_a_parsed_model(count_parses):
    """to_keras -> check_parity -> export_tflite(like=) with one parsed source: none parses
    it again (the export's own result is parsed once, by its interface check)."""
    import flavor_models as fm

    from mlflow_tflite_keras import TFLiteModel, check_parity, export_tflite, to_keras

    model = TFLiteModel(fm.cnn())
    keras_model = to_keras(model)
    assert check_parity(model, keras_model, fm.images(4)).passed
    assert count_parses.of(model.model_bytes) == 1
    exported, report = export_tflite(keras_model, like=model, return_report=True)
    assert report.ok and count_parses.of(model.model_bytes) == 1
    assert count_parses.of(exported) == 1
