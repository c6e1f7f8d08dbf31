"""Runs reconstructions under the Keras backend of this process (``KERAS_BACKEND``, set by the
parent before Python starts: Keras picks its backend once, at import).

``python backend_worker.py CASE_DIR`` reads ``CASE_DIR/cases.json`` (a list of cases: name,
``.tflite`` and ``.keras`` paths saved by a TensorFlow process, an ``.npy`` input batch, whether
to fit) and writes ``CASE_DIR/results.json``. For each case, the ``.keras`` file reloaded here
and the model :func:`to_keras` rebuilds here are each judged the same way: parity with LiteRT
(eager and compiled), a 5% change of one kernel rejected, and one ``fit`` step that must change
every trainable weight; for cases marked ``export``, the fine-tuned model is exported back to
``.tflite`` like the source (the export runs in a TensorFlow child process) and must answer as
the fine-tuned model does here.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

import numpy as np


def _parity(data, model, x):
    from mlflow_tflite_keras.converter.parity import check_parity

    report = check_parity(data, model, x)
    result = {"passed": bool(report.passed and report.compiled.passed),
              "max_rel": max(o.max_rel_error for o in report.outputs),
              "report": str(report)}
    kernels = [w for w in model.trainable_weights if w.path.endswith("kernel")]
    if kernels:  # the same check must reject a 5% change of one middle kernel
        weight = kernels[len(kernels) // 2]
        original = np.array(weight.numpy())
        weight.assign(original * 1.05)
        try:
            result["rejects_5_percent"] = not check_parity(data, model, x,
                                                           compiled=False).passed
        finally:
            weight.assign(original)
    return result


def _fit_step(model, x):
    """One ``fit`` step (Adam) towards targets away from the current outputs: returns the
    paths of trainable weights it left unchanged."""
    import keras

    out = model.predict_on_batch(x)
    rng = np.random.default_rng(0)

    def target(y):
        y = np.asarray(y)
        return (y + rng.normal(0, 0.5, y.shape) * (np.std(y) + 0.1)).astype(y.dtype)

    y = {k: target(v) for k, v in out.items()} if isinstance(out, dict) else target(out)
    before = [np.array(w.numpy()) for w in model.trainable_weights]
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    history = model.fit(x, y, epochs=1, batch_size=len(x), verbose=0)
    unchanged = [w.path for w, b in zip(model.trainable_weights, before)
                 if np.array_equal(np.asarray(w.numpy()), b)]
    return {"n_trainable": len(before), "unchanged": unchanged,
            "loss": float(history.history["loss"][0])}


def _output_names(model):
    return list(model.output) if isinstance(model.output, dict) else None


def _export(data, model, x):
    """The fine-tuned model exported like the source (in a TensorFlow child process): the
    new ``.tflite`` answers as the fine-tuned model does on this backend."""
    from mlflow_tflite_keras.converter.parity import check_parity
    from mlflow_tflite_keras.export import export_tflite

    new = export_tflite(model, like=data)
    report = check_parity(new, model, x, compiled=False)
    return {"passed": bool(report.passed), "report": str(report)}


def _judge(data, model, x, fit, export=False):
    result = {"parity": _parity(data, model, x), "output_names": _output_names(model)}
    if fit:
        result["fit"] = _fit_step(model, x)
    if export:
        result["export"] = _export(data, model, x)
    return result


def main(case_dir: str) -> None:
    import keras

    from mlflow_tflite_keras.converter import to_keras

    with open(os.path.join(case_dir, "cases.json")) as f:
        cases = json.load(f)
    results = {"backend": keras.backend.backend(), "cases": {}}
    for case in cases:
        with open(case["tflite"], "rb") as f:
            data = f.read()
        x = np.load(case["inputs"])
        entry = {}
        for how in ("loaded", "to_keras"):
            try:
                if how == "loaded":
                    model = keras.saving.load_model(case["keras"], safe_mode=True)
                else:
                    model = to_keras(data, **case.get("to_keras_kwargs", {}))
                entry[how] = _judge(data, model, x, case.get("fit", True),
                                    export=how == "to_keras" and case.get("export", False))
            except Exception as e:  # noqa: BLE001 - reported to the parent, which fails
                entry[how] = {"error": f"{type(e).__name__}: {e}",
                              "traceback": traceback.format_exc()[-4000:]}
        results["cases"][case["name"]] = entry
    with open(os.path.join(case_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
