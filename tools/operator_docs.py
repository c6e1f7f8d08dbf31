"""Generate ``docs/operators.md`` from the handler registry: one row per operator (builtins,
then custom operators by custom code) with its Keras layer, its family module and the tests
that exercise it.

Run: ``python tools/operator_docs.py > docs/operators.md`` (``make docs``). A developer tool,
not part of the package: it reads ``tests/``, which is not installed.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from mlflow_tflite_keras.converter.registry import (
    load_handlers,
    schema_builtin_operators,
    unsupported_reason,
)

REPO = Path(__file__).resolve().parents[1]


def tests_by_operator(tests_dir: Path) -> dict[str, list[str]]:
    """Operator name -> ``file::test`` for every test function whose body names the op in a
    string literal (``check_op("CONV_2D", ...)``, ``expect_ops=["PAD"]``, parametrize ids)."""
    found: dict[str, list[str]] = {}
    names = set(load_handlers())
    for path in sorted(tests_dir.rglob("test_*.py")):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) \
                    or not node.name.startswith("test"):
                continue
            literals = {n.value for n in ast.walk(node)
                        if isinstance(n, ast.Constant) and isinstance(n.value, str)}
            for decorator in node.decorator_list:
                literals |= {n.value for n in ast.walk(decorator)
                             if isinstance(n, ast.Constant) and isinstance(n.value, str)}
            for op in names & literals:
                found.setdefault(op, []).append(f"{path.relative_to(REPO)}::{node.name}")
    return found


def operators_markdown(tests_dir: Path | None = None) -> str:
    handlers = load_handlers()
    tests = tests_by_operator(tests_dir or REPO / "tests")
    builtins = sorted(op for op, h in handlers.items() if not h.custom)
    custom = sorted(op for op, h in handlers.items() if h.custom)
    schema_ops = schema_builtin_operators()
    lines = [
        "# Supported operators",
        "",
        "Generated from the converter's handler registry by "
        "`tools/operator_docs.py` (`make docs`); a test checks it is current.",
        "",
        f"{len(builtins)} of the schema's {len(schema_ops)} builtin operators "
        f"({100 * len(builtins) / len(schema_ops):.0f}%); every other one is listed below "
        "with the reason.",
        "",
        *_table(builtins, handlers, tests),
        "",
        "## Builtin operators not converted",
        "",
        "Without a handler, an operator is named by the unsupported-operators error (with the "
        "reason below); `unsupported=\"wrap\"` runs it in an embedded, frozen `TFLiteLayer` "
        "(where LiteRT has a kernel for it).",
        "",
        "| operator | reason |",
        "|---|---|",
        *[f"| `{op}` | {unsupported_reason(op) or 'not implemented yet'} |"
          for op in schema_ops if op not in handlers],
        "",
        "## Custom operators",
        "",
        f"{len(custom)} custom operators, by custom code (options decoded as each op's "
        "kernel reads them).",
        "",
        *_table(custom, handlers, tests),
    ]
    return "\n".join(lines) + "\n"


def _table(names, handlers, tests) -> list[str]:
    lines = ["| operator | Keras layer | family | tests |", "|---|---|---|---|"]
    for op in names:
        h = handlers[op]
        family = h.module.rsplit(".", 1)[-1]
        test_refs = "<br>".join(f"`{t}`" for t in tests.get(op, [])[:3]) or "—"
        lines.append(f"| `{op}` | {h.layer} | {family} | {test_refs} |")
    return lines


if __name__ == "__main__":
    sys.stdout.write(operators_markdown())
