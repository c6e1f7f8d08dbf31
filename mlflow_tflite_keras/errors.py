"""The exceptions of this package's public API.

Kept in a module of its own that imports neither TensorFlow nor Keras, so callers (the CLI in
particular) can catch them by type before anything heavy is loaded.
"""

from __future__ import annotations

from mlflow.exceptions import INVALID_PARAMETER_VALUE, MlflowException

__all__ = ["ActionableError", "InterfaceChangedError", "ParityCheckError",
           "UnsupportedOperatorsError", "reject_unknown_keywords"]


class ActionableError(MlflowException):
    """An error the caller fixes by passing parameters.

    ``reason`` says what is wrong; ``remedy`` maps each parameter to the value to pass
    (``None``: a value of the caller's choosing) and ``purpose`` says what passing it does. The
    message spells them as Python keyword arguments; the CLI spells its flags instead (see
    :meth:`advice`), so neither parses the other's text.
    """

    def __init__(self, reason: str, remedy: dict, purpose: str,
                 error_code=INVALID_PARAMETER_VALUE):
        self.reason, self.remedy, self.purpose = reason, dict(remedy), purpose
        super().__init__(f"{reason}\n{self.advice(_python_spelling)}", error_code=error_code)

    def advice(self, spell) -> str:
        """"Pass <parameters> <purpose>.", each parameter spelled by ``spell(name, value)``."""
        return f"Pass {' and '.join(spell(k, v) for k, v in self.remedy.items())} {self.purpose}."


def _python_spelling(name, value) -> str:
    return name if value is None else f"{name}={value!r}"


class UnsupportedOperatorsError(ActionableError):
    """The model has operators the converter cannot rebuild (all listed at once, with their
    counts, in ``unsupported``)."""

    def __init__(self, reason: str, unsupported: dict[str, int]):
        super().__init__(reason, {"unsupported": "wrap"},
                         "to run them as embedded, frozen TFLiteLayers (hybrid conversion)")
        self.unsupported = unsupported


class InterfaceChangedError(ActionableError):
    """``export_tflite`` produced a model whose interface (inputs, outputs, signatures)
    differs from the source's; ``report`` is the ``InterfaceReport`` listing the
    differences."""

    def __init__(self, report):
        super().__init__(
            "The exported model's interface differs from the source model's "
            f"({len(report.differences)} difference(s)):\n"
            + "\n".join(f"  - {d}" for d in report.differences),
            {"allow_interface_changes": True}, "to accept these changes")
        self.report = report


class ParityCheckError(MlflowException):
    """A converted model does not match the ``.tflite`` it came from within the tolerances;
    ``report`` is the ``ParityReport`` (also logged to the run)."""

    def __init__(self, report, message: str | None = None):
        super().__init__(message or f"Parity check failed:\n{report}")
        self.report = report


def reject_unknown_keywords(function: str, given, valid) -> None:
    """Raise ``TypeError`` for keyword arguments not in ``valid``, naming the closest valid
    one, as Python does for a function without ``**kwargs`` (a typo such as
    ``registred_model_name`` must not be ignored silently)."""
    import difflib

    unknown = sorted(set(given) - set(valid))
    if not unknown:
        return
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, sorted(valid), n=1, cutoff=0.6)
        hints.append(f"'{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    plural = "s" if len(unknown) > 1 else ""
    raise TypeError(f"{function}() got unexpected keyword argument{plural} {', '.join(hints)}")
