"""Fuzzing the loader: mutated ``.tflite`` files never crash, hang or raise unclear errors.

A bounded, deterministic run (``FUZZ_MUTANTS`` mutants, default 250, seed ``FUZZ_SEED``) of
valid models mutated at byte level (truncation, flips, bad offsets, huge lengths, wrong
identifiers, appended garbage) and at schema level (indices, shapes, arity, options). Each
mutant goes through ``TFLiteModel``, ``save_model``, ``load_model``, the pyfunc, the CLI
``inspect`` and ``to_keras`` in a worker subprocess (see ``fuzz_worker.py``); a crash or hang
saves the mutant under ``test-artifacts/fuzz-crashes/``. Longer runs:
``benchmarks/fuzz_loader.py``.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import flavor_models as fm
import fuzz_worker as fw
from mlflow.exceptions import MlflowException
from mlflow_tflite_keras.tflite_model import TFLiteModel

N_MUTANTS = int(os.environ.get("FUZZ_MUTANTS", "250"))
SEED = int(os.environ.get("FUZZ_SEED", "20240521"))


def bases() -> dict[str, bytes]:
    return {"cnn_float32": fm.cnn("float32"), "cnn_int8": fm.cnn("full-int8"),
            "multi_io": fm.multi_io(), "multi_signature": fm.multi_signature(),
            "stateful": fm.stateful_accumulator()}


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    models = bases()
    mutants = fw.make_mutants(models, N_MUTANTS, SEED)
    directory = tmp_path_factory.mktemp("fuzz")
    fw.write_mutants(mutants, models, directory)
    result = fw.run_campaign(directory, mutant_timeout=60, startup_timeout=180)
    report = fw.ROOT / "test-artifacts" / "fuzz-report.json"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps({"seed": SEED, **result.summary(),
                                  "crashes": result.crashes, "bad": result.bad()}, indent=2))
    return mutants, result


def test_no_crash_and_no_hang(campaign):
    _, result = campaign
    assert not result.crashes, "\n".join(
        f"{c['failure']} on {c['mutant']} ({c['note']}), rc={c['returncode']}, saved "
        f"{c['saved']}" for c in result.crashes)


def test_every_target_ends_with_success_or_a_clear_exception(campaign):
    _, result = campaign
    bad = [b for b in result.bad() if b[1] != "to_keras"]
    assert not bad, "\n".join(f"{m} {t}: {o.get('error')}: {o.get('message', '')[:300]}"
                              for m, t, o in bad[:20])


def test_to_keras_raises_only_mlflow_exceptions(campaign):
    """``to_keras`` on a model that parses but whose static shapes / options are inconsistent
    (LiteRT itself would refuse it at allocation) fails with the converter's
    "Cannot convert op ..." MlflowException naming the op, never a plain error from inside
    a Keras layer, and never a crash."""
    _, result = campaign
    bad = [b for b in result.bad() if b[1] == "to_keras"]
    assert not bad, "\n".join(f"{m}: {o.get('error')}: {o.get('message', '')[:300]}"
                              for m, _, o in bad[:20])


def test_every_mutant_ran_every_target(campaign):
    mutants, result = campaign
    assert len(result.records) + len(result.crashes) == len(mutants)
    for record in result.records:
        assert set(record["targets"]) == set(fw.TARGETS), record["mutant"]


def test_outcomes_agree_across_entry_points(campaign):
    """A file the parser refuses is refused everywhere; the CLI says 'Error:' and exits 2.
    The one exception is the pyfunc of a saved model whose file was replaced by another of
    the same size: it reads only the signature tensors (validated when saved, not at every
    load) and may answer where LiteRT runs the file; it never crashes (crashes are counted
    separately) and otherwise refuses with an MlflowException, never another error."""
    _, result = campaign
    for r in result.records:
        t = r["targets"]
        if t["parse"]["outcome"] == "rejected":
            for target in ("save", "load", "to_keras"):
                assert t[target]["outcome"] == "rejected", (r["mutant"], target, t[target])
            assert t["pyfunc"]["outcome"] in ("rejected", "ok"), (r["mutant"], t["pyfunc"])
            assert t["cli"]["outcome"] == "rejected", (r["mutant"], t["cli"])
            assert t["cli"]["message"] == "Error: " + t["parse"]["message"][:293]
            assert t["save"]["message"] == t["parse"]["message"]
        else:
            # save_model may still refuse it (e.g. a tensor type the pyfunc cannot exchange);
            # load_model refuses a file of another size than the one saved (a replaced or
            # truncated artifact), with that reason.
            assert t["load"]["outcome"] == "ok" or (
                t["load"]["error"] == "MlflowException"
                and "damaged or replaced" in t["load"]["message"]), (r["mutant"], t["load"])
            assert t["save"]["outcome"] in ("ok", "rejected"), (r["mutant"], t["save"])
            assert t["cli"]["outcome"] == "ok", (r["mutant"], t["cli"])


def test_the_run_exercises_both_paths(campaign):
    """Sanity of the mutator: every kind is used, and enough mutants get past the parser to
    reach the interpreter (and its kernels) as well as being refused."""
    mutants, result = campaign
    assert {m.kind for m in mutants} == set(fw.MUTATORS)
    counts = result.summary()["targets"]
    assert counts["parse"].get("ok", 0) >= N_MUTANTS // 10
    assert counts["parse"].get("rejected", 0) >= N_MUTANTS // 3
    assert counts["pyfunc"].get("ok", 0) >= N_MUTANTS // 20
    assert result.seconds < 240


def test_driver_detects_crashes_and_hangs(tmp_path):
    """The harness itself: an aborting, a segfaulting and a hanging mutant are each reported
    and saved, the worker is restarted, and the other mutants still run."""
    models = {"multi_signature": fm.multi_signature()}
    good = models["multi_signature"]
    mutants = [fw.Mutant("a-good", "multi_signature", "none", "", good),
               fw.Mutant("b-abort", "multi_signature", "none", "", b"FUZZ-SELFTEST-ABORT"),
               fw.Mutant("c-segv", "multi_signature", "none", "", b"FUZZ-SELFTEST-SEGV"),
               fw.Mutant("d-hang", "multi_signature", "none", "", b"FUZZ-SELFTEST-HANG"),
               fw.Mutant("e-good", "multi_signature", "none", "", good[:100])]
    fw.write_mutants(mutants, models, tmp_path / "in")
    crash_dir = tmp_path / "crashes"
    result = fw.run_campaign(tmp_path / "in", targets=("parse", "selftest"), mutant_timeout=5,
                             crash_dir=crash_dir)
    assert [r["mutant"] for r in result.records] == ["a-good", "e-good"]
    assert result.records[0]["targets"]["parse"]["outcome"] == "ok"
    assert result.records[1]["targets"]["parse"]["outcome"] == "rejected"
    kinds = {c["mutant"]: (c["failure"], c["returncode"]) for c in result.crashes}
    assert kinds["b-abort"][0] == "crash" and kinds["b-abort"][1] < 0
    assert kinds["c-segv"] == ("crash", -11)
    assert kinds["d-hang"][0] == "hang"
    for name in ("b-abort", "c-segv", "d-hang"):
        assert (crash_dir / f"{name}.tflite").exists() and (crash_dir / f"{name}.json").exists()
    assert (crash_dir / "base-multi_signature.tflite").read_bytes() == good
    assert result.worker_starts == 4


# ---- regressions: the structural checks that stopped interpreter crashes -----------------------


def mutated(data, change):
    model = fw._unpack(data)
    change(model)
    return fw._repack(model)


def _op(model, opcode_name, subgraph=0):
    from mlflow_tflite_keras.tflite_model import builtin_name

    for op in model.subgraphs[subgraph].operators:
        code = model.operatorCodes[op.opcodeIndex]
        if builtin_name(max(code.builtinCode, code.deprecatedBuiltinCode)) == opcode_name:
            return op
    raise LookupError(opcode_name)


def _set(obj, **values):
    for k, v in values.items():
        setattr(obj, k, v)


def _constant_tensor(model):
    sg = model.subgraphs[0]
    return next(i for i, t in enumerate(sg.tensors)
                if t.buffer and model.buffers[t.buffer].data is not None)


REGRESSIONS = [
    # Each of these segfaulted LiteRT (interpreter creation or invoke) before the checks.
    ("cnn_int8", lambda m: _set(_op(m, "RESHAPE"), inputs=np.array([_op(m, "RESHAPE").inputs[0],
                                                                     -1], np.int32)),
     "omits its input 1"),
    ("multi_signature", lambda m: _set(_op(m, "MUL"), inputs=np.array([-1, 1], np.int32)),
     "omits its input 0"),
    ("stateful", lambda m: _set(_op(m, "READ_VARIABLE"), inputs=np.array([], np.int32)),
     "has 0 inputs"),
    ("cnn_int8", lambda m: _set(_op(m, "SOFTMAX"), outputs=np.array([_constant_tensor(m)],
                                                                     np.int32)),
     "a constant"),
    ("cnn_float32", lambda m: _set(_op(m, "SOFTMAX"), outputs=np.array(
        [_op(m, "CONV_2D").outputs[0]], np.int32)), "already written"),
    ("cnn_float32", lambda m: _set(_op(m, "SOFTMAX"), opcodeIndex=_op(m, "CONV_2D").opcodeIndex),
     "has 1 inputs|options"),
    # Schema-level nonsense the checks refuse before any interpreter sees it.
    ("stateful", lambda m: _set(_op(m, "CALL_ONCE").builtinOptions, initSubgraphIndex=7),
     "names subgraph 7"),
    ("stateful", lambda m: _set(_op(m, "CALL_ONCE").builtinOptions, initSubgraphIndex=0),
     "cycle"),
    ("cnn_float32", lambda m: _set(_op(m, "CONV_2D").builtinOptions, strideW=0),
     "strideW = 0"),
    ("cnn_float32", lambda m: _set(_op(m, "CONV_2D"), builtinOptions=None,
                                   builtinOptionsType=0), "no options"),
    ("multi_signature", lambda m: _set(m.signatureDefs[0].inputs[0], tensorIndex=2),
     "not a input"),
    ("multi_signature", lambda m: _set(m.signatureDefs[1].outputs[0], name=None),
     "output without a name"),  # the converter failed on it with an AttributeError
    ("multi_signature", lambda m: _set(m.signatureDefs[0], signatureKey=None),
     "no signature key"),
    ("cnn_float32", lambda m: _set(m.operatorCodes[0], builtinCode=32, deprecatedBuiltinCode=32,
                                   customCode=None), "CUSTOM without a custom code"),
    ("cnn_int8", lambda m: _set(next(t for t in m.subgraphs[0].tensors if t.quantization
                                     and t.quantization.scale is not None
                                     and len(t.quantization.scale) > 1).quantization,
                                scale=np.ones(3, np.float32), zeroPoint=np.zeros(3, np.int64)),
     "per-channel scales"),
]


@pytest.mark.parametrize("base, change, message", REGRESSIONS,
                         ids=[f"{b}-{m.split('|')[0][:24]}" for b, _, m in REGRESSIONS])
def test_structural_checks(base, change, message):
    data = mutated(bases()[base], change)
    with pytest.raises(MlflowException, match=message) as e:
        TFLiteModel(data)
    assert e.value.error_code == "INVALID_PARAMETER_VALUE"


def test_valid_models_still_pass_the_checks():
    for name, data in bases().items():
        TFLiteModel(fw._repack(fw._unpack(data)))  # the repacker itself keeps models valid
        TFLiteModel(data)


def test_option_union_mutants_never_crash(tmp_path):
    """Mutants whose options unions name subgraphs (in range, out of range, their own: a
    cycle), in ``builtin_options`` or ``builtin_options_2``, with decoy tables, through the
    parser, save_model and the pyfunc in a crash-isolating worker."""
    models = {"stateful": fm.stateful_accumulator(), "multi_signature": fm.multi_signature()}
    mutants = fw.make_mutants(models, 40, SEED, weights={"option_union": 1})
    fw.write_mutants(mutants, models, tmp_path / "in")
    result = fw.run_campaign(tmp_path / "in", targets=("parse", "save", "pyfunc"),
                             mutant_timeout=60, startup_timeout=180,
                             crash_dir=tmp_path / "crashes")
    assert not result.crashes, [(c["mutant"], c["note"], c["failure"]) for c in result.crashes]
    assert not result.bad(), result.bad()[:5]
    notes = " ".join(m.note for m in mutants)
    assert "builtinOptions2 := " in notes and "decoy" in notes
    outcomes = [r["targets"]["parse"]["outcome"] for r in result.records]
    assert "rejected" in outcomes
    assert any("cycle" in r["targets"]["parse"].get("message", "") for r in result.records)
