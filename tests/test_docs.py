"""docs/operators.md is generated from the handler registry and must be current."""

from pathlib import Path

from mlflow_tflite_keras.converter.docs import operators_markdown

DOC = Path(__file__).resolve().parent.parent / "docs" / "operators.md"


def test_operators_doc_is_current():
    assert DOC.read_text() == operators_markdown(), "run `make docs` to regenerate"


def test_every_operator_has_a_test():
    """Each supported operator names at least one test that exercises it."""
    untested = [line.split("|")[1].strip() for line in operators_markdown().splitlines()
                if line.startswith("| `") and line.rstrip().endswith("| — |")]
    assert not untested, f"operators without a test: {untested}"
