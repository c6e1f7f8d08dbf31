"""Longer fuzzing of the ``.tflite`` loader than the bounded run in ``tests/test_fuzz.py``.

Two modes:

* ``random`` (default): the test suite's mutators (truncation, byte flips, bad offsets, huge
  lengths, wrong identifiers, appended garbage, schema-level changes) in batches, each batch in
  a worker subprocess that runs every entry point (``TFLiteModel``, ``save_model``,
  ``load_model``, pyfunc predict, CLI ``inspect``, ``to_keras``). Crashes and hangs are saved
  under ``test-artifacts/fuzz-crashes/`` with a JSON note; the run stops after ``--mutants``
  mutants or ``--time-limit`` seconds.
* ``atheris`` (needs ``pip install atheris``; not a project dependency): coverage-guided
  libFuzzer over ``TFLiteModel(bytes)`` and, when the parser accepts the input, a LiteRT
  interpreter that allocates and invokes it. Seeds are the test models; half of the mutations
  come from the structure-aware mutators above. libFuzzer writes crashing inputs to
  ``test-artifacts/fuzz-crashes/``; a Python exception other than MlflowException counts as a
  crash too.

Examples::

    .venv/bin/python benchmarks/fuzz_loader.py --mutants 5000 --time-limit 900
    .venv/bin/python benchmarks/fuzz_loader.py --mutants 3000 --only semantic --targets parse,pyfunc
    .venv/bin/python benchmarks/fuzz_loader.py --mode atheris --time-limit 600
    .venv/bin/python tests/fuzz_worker.py --one test-artifacts/fuzz-crashes/<mutant>.tflite
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import fuzz_worker as fw  # noqa: E402


def base_models() -> dict[str, bytes]:
    import flavor_models as fm

    return {"cnn_float32": fm.cnn("float32"), "cnn_int8": fm.cnn("full-int8"),
            "multi_io": fm.multi_io(), "multi_signature": fm.multi_signature(),
            "stateful": fm.stateful_accumulator()}


def merge(total: dict, summary: dict):
    for key in ("mutants", "crashes", "bad", "worker_starts"):
        total[key] = total.get(key, 0) + summary[key]
    for kind, n in summary["kinds"].items():
        total.setdefault("kinds", {})[kind] = total.get("kinds", {}).get(kind, 0) + n
    for target, outcomes in summary["targets"].items():
        for outcome, n in outcomes.items():
            slot = total.setdefault("targets", {}).setdefault(target, {})
            slot[outcome] = slot.get(outcome, 0) + n


def run_random(args) -> int:
    bases = base_models()
    weights = {k: (1 if k in args.only else 0) for k in fw.MUTATORS} if args.only else None
    targets = tuple(args.targets.split(","))
    deadline = time.monotonic() + args.time_limit
    total: dict = {}
    crashes, bad = [], []
    batch_index = 0
    started = time.monotonic()
    while total.get("mutants", 0) < args.mutants and time.monotonic() < deadline:
        count = min(args.batch, args.mutants - total.get("mutants", 0))
        mutants = fw.make_mutants(bases, count, seed=args.seed * 100003 + batch_index,
                                  weights={k: w for k, w in (weights or fw.WEIGHTS).items() if w})
        # Names stay unique across batches (crash files are named after them).
        for m in mutants:
            m.name = f"s{args.seed}b{batch_index:03d}-{m.name}"
        with tempfile.TemporaryDirectory(prefix="fuzz-loader-") as d:
            fw.write_mutants(mutants, bases, Path(d))
            result = fw.run_campaign(Path(d), targets=targets, mutant_timeout=args.mutant_timeout,
                                     total_timeout=max(1.0, deadline - time.monotonic()),
                                     crash_dir=args.crash_dir, memory_gb=args.memory_gb)
        summary = result.summary()
        summary["mutants"] = len(result.records) + len(result.crashes)
        merge(total, summary)
        crashes += result.crashes
        bad += result.bad()
        batch_index += 1
        print(f"batch {batch_index}: {summary['mutants']} mutants in {summary['seconds']} s, "
              f"{len(result.crashes)} crash(es)/hang(s), {len(result.bad())} unclear error(s)",
              flush=True)
    total["seconds"] = round(time.monotonic() - started, 1)
    total["mutants_per_second"] = round(total.get("mutants", 0) / max(total["seconds"], 1e-9), 1)
    print(json.dumps(total, indent=2))
    for c in crashes:
        print(f"{c['failure'].upper()}: {c['mutant']} ({c['note']}) rc={c['returncode']} -> "
              f"{c['saved']}")
    for mutant, target, outcome in bad[:50]:
        print(f"UNCLEAR: {mutant} {target}: {outcome.get('error')}: "
              f"{outcome.get('message', '')[:200]}")
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps({**total, "crashes": crashes, "bad": bad}, indent=2))
    return 1 if crashes else 0


# ---- atheris --------------------------------------------------------------------------------


def run_atheris(args) -> int:
    try:
        import atheris
    except ImportError:
        print("atheris is not installed (.venv/bin/pip install atheris); use --mode random.")
        return 2
    import random

    import numpy as np

    with atheris.instrument_imports(include=["mlflow_tflite_keras"]):
        from mlflow_tflite_keras.tflite_model import TFLiteModel
    from mlflow.exceptions import MlflowException

    from ai_edge_litert.interpreter import Interpreter

    bases = base_models()
    corpus = Path(tempfile.mkdtemp(prefix="fuzz-corpus-"))
    for name, data in bases.items():
        (corpus / f"{name}.tflite").write_bytes(data)
    args.crash_dir.mkdir(parents=True, exist_ok=True)

    def test_one_input(data: bytes):
        try:
            model = TFLiteModel(data)
            model.describe()
        except MlflowException:
            return
        try:
            interpreter = Interpreter(model_content=data, num_threads=1)
            interpreter.allocate_tensors()
        except (ValueError, RuntimeError):
            return
        for detail in interpreter.get_input_details():
            shape = [max(int(d), 1) for d in detail["shape"]]
            if int(np.prod(shape)) > 1 << 22:
                return  # a legal but huge input: not what this harness is after
            try:
                interpreter.set_tensor(detail["index"], np.zeros(shape, detail["dtype"]))
            except (ValueError, RuntimeError):
                return
        try:
            interpreter.invoke()
        except (ValueError, RuntimeError):
            return

    def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
        rng = random.Random(seed)
        if rng.random() < 0.5:
            try:
                positions = fw.structural_positions(data)
                kind = rng.choice([k for k, w in fw.WEIGHTS.items() for _ in range(w)])
                mutated, _ = fw.MUTATORS[kind](data, rng, positions)
                return mutated[:max_size]
            except Exception:
                pass
        return atheris.Mutate(data, max_size)

    argv = [sys.argv[0], str(corpus), f"-artifact_prefix={args.crash_dir}/atheris-",
            f"-max_total_time={int(args.time_limit)}",
            f"-rss_limit_mb={int(args.memory_gb * 1024)}",
            f"-timeout={int(args.mutant_timeout)}", "-max_len=200000"]
    if args.mutants:
        argv.append(f"-runs={args.mutants}")
    atheris.Setup(argv, test_one_input, custom_mutator=custom_mutator)
    atheris.Fuzz()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["random", "atheris"], default="random")
    parser.add_argument("--mutants", type=int, default=2000, help="Stop after this many.")
    parser.add_argument("--time-limit", type=float, default=600, help="Seconds, whole run.")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--batch", type=int, default=500, help="Mutants per worker batch.")
    parser.add_argument("--targets", default=",".join(fw.TARGETS),
                        help=f"Comma-separated subset of {','.join(fw.TARGETS)}.")
    parser.add_argument("--only", type=lambda s: set(s.split(",")), default=None,
                        help=f"Only these mutators: {','.join(fw.MUTATORS)}.")
    parser.add_argument("--mutant-timeout", type=float, default=60,
                        help="Seconds without progress before a mutant counts as a hang.")
    parser.add_argument("--memory-gb", type=float, default=6,
                        help="Address-space limit of a worker (a huge allocation fails there).")
    parser.add_argument("--crash-dir", type=Path, default=fw.CRASH_DIR)
    parser.add_argument("--report", type=Path, default=ROOT / "test-artifacts" /
                        "fuzz-loader-report.json")
    args = parser.parse_args()
    if args.only and not args.only <= set(fw.MUTATORS):
        parser.error(f"--only takes {sorted(fw.MUTATORS)}")
    return run_atheris(args) if args.mode == "atheris" else run_random(args)


if __name__ == "__main__":
    sys.exit(main())
