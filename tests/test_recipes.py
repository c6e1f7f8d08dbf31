"""Quantization recipes and kinds live in one module: its tables agree with each other, and
no other module spells a kind."""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from mlflow.exceptions import MlflowException

from mlflow_tflite_keras import recipes
from mlflow_tflite_keras.tflite_model import NUMPY_DTYPES, Quantization

PACKAGE = Path(recipes.__file__).resolve().parent


@pytest.mark.parametrize("recipe", recipes.RECIPES)
def test_every_recipe_is_made_one_way_and_judged(recipe):
    assert recipes.normalize_recipe(recipe) == recipe
    if recipe.startswith(("weight-only", "dynamic-range")):
        weight_only, bits, block = recipes.quantizer_config(recipe)
        assert bits in (4, 8) and block == 0
        assert recipe.startswith("weight-only" if weight_only else "dynamic-range")
    else:
        assert recipe in recipes.CONVERTER_RECIPES
        with pytest.raises(MlflowException, match="made by TFLiteConverter"):
            recipes.quantizer_config(recipe)
    kind = "none" if recipe == "float32" else recipe  # the kind the recipe makes
    assert recipes.tolerance_family(kind) in recipes.DEFAULT_TOLERANCES


def test_full_integer_recipes():
    for name, full in recipes.FULL_INTEGER.items():
        assert name in recipes.RECIPES and name in recipes.CONVERTER_RECIPES
        assert full.activation_type in recipes.QUANTIZED_TYPES
        assert full.io_type in full.io_types and "float32" in full.io_types
        assert recipes.QUANTIZED_IO[full.activation_type] == full.io_type
        assert name in recipes.OP_BY_OP_TOLERANCES
        assert recipes.kind_from({full.activation_type}, {"dynamic-range-int8"}) == name
    # INT16 activations decide, even next to INT8 ones.
    assert recipes.kind_from({"INT8", "INT16"}, set()) == "int16x8"


def test_blockwise_recipes_and_aliases():
    assert recipes.quantizer_config("weight-only-int4-blockwise-32") == (True, 4, 32)
    assert recipes.quantizer_config("int4") == (False, 4, 0)
    assert recipes.normalize_recipe("dynamic") in recipes.CONVERTER_RECIPES
    for bad in ("int3", "weight-only-int4-blockwise-48", "weight-only-int4-blockwise-"):
        with pytest.raises(MlflowException, match="Unknown quantization recipe"):
            recipes.normalize_recipe(bad)


def _tensor(type_name, block_size=0, quantized=True):
    q = Quantization(np.ones(1, np.float32), np.zeros(1, np.int64), block_size=block_size) \
        if quantized else None
    return SimpleNamespace(type_name=type_name, quantization=q)


def test_kinds_from_weights():
    assert recipes.weight_scheme(_tensor("INT4", 32), True, False) == \
        "weight-only-int4-blockwise-32"
    assert recipes.weight_scheme(_tensor("INT8"), False, False) == "dynamic-range-int8"
    assert recipes.weight_scheme(_tensor("INT8"), False, True) is None  # an integer op's
    assert recipes.weight_scheme(_tensor("FLOAT16", quantized=False), False, False) == "float16"
    assert recipes.weight_scheme(_tensor("FLOAT32", quantized=False), True, False) is None
    assert recipes.kind_from(set(), set()) == "none"
    assert recipes.kind_from(set(), {"weight-only-int8", "dynamic-range-int8"}) == \
        "dynamic-range-int8"
    assert recipes.kind_from(set(), {"weight-only-int4", "float16"}) == recipes.MIXED
    assert recipes.tolerance_family(recipes.MIXED) == "dynamic-range"


def test_quantized_types_have_storage():
    assert set(recipes.WEIGHT_TYPES) <= set(recipes.QUANTIZED_TYPES)
    assert set(recipes.QUANTIZED_TYPES) <= set(NUMPY_DTYPES)


KIND_NAMES = (set(recipes.RECIPES) - {"float32", "float16"}) | {
    "weight-only", "dynamic-range", recipes.MIXED, "bfloat16"}


def _kind_literals(path: Path) -> list[tuple[int, str]]:
    """String constants (docstrings aside) that name a kind or a recipe."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                       ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docstrings
            and any(node.value == k or node.value.startswith(k + "-") for k in KIND_NAMES)]


def test_no_other_module_names_a_kind():
    """Adding a kind touches recipes.py (and its tests): nothing else spells one."""
    found = {str(p.relative_to(PACKAGE)): hits for p in sorted(PACKAGE.rglob("*.py"))
             if p.name != "recipes.py" and (hits := _kind_literals(p))}
    assert not found, found


def test_the_kind_literal_check_finds_one(tmp_path):
    """The check above rejects a wrong answer."""
    module = tmp_path / "m.py"
    module.write_text('"""full-int8 in a docstring is fine."""\n'
                      'def f(kind):\n    return kind == "full-int8"\n')
    assert _kind_literals(module) == [(3, "full-int8")]
