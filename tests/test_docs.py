"""docs/operators.md is generated from the handler registry and must be current."""

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "operators.md"


def _generator():
    """tools/operator_docs.py: a developer tool, outside the package (it reads tests/)."""
    spec = importlib.util.spec_from_file_location("operator_docs",
                                                  REPO / "tools" / "operator_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_operators_doc_is_current():
    assert DOC.read_text() == _generator().operators_markdown(), "run `make docs` to regenerate"


def test_every_operator_has_a_test():
    """Each supported operator names at least one test that exercises it."""
    markdown = _generator().operators_markdown()
    untested = [line.split("|")[1].strip() for line in markdown.splitlines()
                if line.startswith("| `") and line.rstrip().endswith("| — |")]
    assert not untested, f"operators without a test: {untested}"


def test_generator_is_not_in_the_package():
    assert not (REPO / "mlflow_tflite_keras" / "converter" / "docs.py").exists()
