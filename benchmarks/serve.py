"""`mlflow models serve` under load: this flavor (LiteRT) vs ``mlflow.keras``, same network.

MobileNetV2 (weights=None, 224x224x3, float32) saved twice in local model directories: as a
``.tflite`` with ``mlflow.tflite_keras.save_model`` and as Keras 3 with ``mlflow.keras.save_model``.
For each, a real ``mlflow models serve --env-manager local`` process is started on 127.0.0.1
(one at a time, so they never compete for CPU) and measured:

* cold start: process start to the first successful ``/invocations`` answer (batch 1);
* at batch 1 and batch 16: p50 / p99 request latency and throughput (images/s) with
  ``--clients`` concurrent client threads (one ``requests.Session`` each) sending a fixed
  number of requests (``--requests``), bounded by ``--time-limit`` seconds per phase.

Targets: tflite throughput >= 5x keras, tflite cold start <= 1/3 of keras.
Run: .venv/bin/python benchmarks/serve.py [--requests N] [--clients C] [--workers 1 2]
     [--payload json|parquet] [--time-limit S]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import requests  # noqa: E402

import mlflow  # noqa: E402
from _models import make_mobilenet_v2, mobilenet_v2  # noqa: E402  (puts tests/ on sys.path)
from servers import MLFLOW, clean_env, free_port, stop  # noqa: E402

BATCHES = (1, 16)
FLAVORS = ("tflite_keras", "keras")


def save_models(root: Path) -> dict[str, Path]:
    """The same MobileNetV2 (seed 0) as .tflite and as Keras, in local model directories."""
    from mlflow.models import infer_signature

    paths = {"tflite_keras": root / "tflite", "keras": root / "keras"}
    mlflow.tflite_keras.save_model(mobilenet_v2("float32"), str(paths["tflite_keras"]))
    model = make_mobilenet_v2()
    x = np.zeros((1, 224, 224, 3), np.float32)
    mlflow.keras.save_model(model, str(paths["keras"]),
                            signature=infer_signature(x, model.predict(x, verbose=0)))
    return paths


def payload(kind: str, x: np.ndarray, input_name: str | None) -> tuple[bytes, str]:
    """Request body and content type: ``{"inputs": ...}`` JSON, or a Parquet DataFrame with
    one flat tensor column (reshaped by MLflow to the signature's shape)."""
    if kind == "json":
        return json.dumps({"inputs": x.tolist()}).encode(), "application/json"
    import pandas as pd

    frame = pd.DataFrame({input_name or "x": list(x.reshape(len(x), -1))})
    buffer = io.BytesIO()
    frame.to_parquet(buffer)
    return buffer.getvalue(), "application/vnd.apache.parquet"


@contextlib.contextmanager
def serve(path: Path, workers: int, log: Path, first_request: tuple[bytes, str],
          timeout: float = 240):
    """Start ``mlflow models serve``; yield (url, seconds from process start to the first
    successful /invocations answer); kill the process group afterwards."""
    port = free_port()
    args = [MLFLOW, "models", "serve", "-m", str(path), "--env-manager", "local",
            "--host", "127.0.0.1", "-p", str(port), "--workers", str(workers)]
    url = f"http://127.0.0.1:{port}/invocations"
    body, content_type = first_request
    with open(log, "wb") as out:
        start = time.monotonic()
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=clean_env(),
                                start_new_session=True)
    try:
        with requests.Session() as session:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited with {proc.returncode}:\n"
                                       + log.read_text()[-3000:])
                if time.monotonic() - start > timeout:
                    raise RuntimeError(f"server not answering after {timeout}s:\n"
                                       + log.read_text()[-3000:])
                with contextlib.suppress(requests.ConnectionError):
                    r = session.post(url, data=body, headers={"Content-Type": content_type},
                                     timeout=timeout)
                    if r.status_code == 200:
                        break
                    raise RuntimeError(f"/invocations answered {r.status_code}: {r.text[:500]}")
                time.sleep(0.1)
        yield url, time.monotonic() - start
    finally:
        stop(proc, timeout=20)


def load(url: str, body: bytes, content_type: str, requests_total: int, clients: int,
         time_limit: float) -> dict:
    """``clients`` threads share a budget of ``requests_total`` requests, stopping early at
    ``time_limit`` seconds. Returns latencies and throughput of the successful requests."""
    lock = threading.Lock()
    budget = [requests_total]
    latencies: list[float] = []
    errors: list[str] = []

    def client():
        with requests.Session() as session:
            # One warm-up request per client, not measured (connection, per-shape tracing).
            session.post(url, data=body, headers={"Content-Type": content_type}, timeout=120)
            barrier.wait()
            deadline = time.monotonic() + time_limit
            while time.monotonic() < deadline:
                with lock:
                    if budget[0] <= 0:
                        return
                    budget[0] -= 1
                start = time.perf_counter()
                r = session.post(url, data=body, headers={"Content-Type": content_type},
                                 timeout=120)
                elapsed = time.perf_counter() - start
                with lock:
                    (latencies.append(elapsed) if r.status_code == 200
                     else errors.append(f"{r.status_code}: {r.text[:200]}"))

    barrier = threading.Barrier(clients + 1)
    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join(time_limit + 130)
    wall = time.perf_counter() - start
    if errors:
        print(f"    {len(errors)} failed requests, e.g. {errors[0]}")
    lat = sorted(latencies)
    return {
        "n": len(lat),
        "p50": statistics.median(lat) if lat else float("nan"),
        "p99": lat[min(len(lat) - 1, int(np.ceil(0.99 * len(lat))) - 1)] if lat else float("nan"),
        "rps": len(lat) / wall if wall > 0 else float("nan"),
    }


def bench_flavor(flavor: str, path: Path, workers: int, args, bodies, log_dir: Path) -> dict:
    log = log_dir / f"{flavor}-w{workers}.log"
    with serve(path, workers, log, bodies[flavor][1]) as (url, cold):
        print(f"  {flavor}: cold start {cold:.2f}s (load average {os.getloadavg()[0]:.1f})",
              flush=True)
        result = {"cold": cold}
        for batch in BATCHES:
            body, content_type = bodies[flavor][batch]
            r = load(url, body, content_type, args.requests, args.clients, args.time_limit)
            print(f"    batch {batch:>2}: {r['n']} requests, p50 {r['p50'] * 1e3:.1f} ms, "
                  f"p99 {r['p99'] * 1e3:.1f} ms, {r['rps'] * batch:.1f} images/s "
                  f"(load average {os.getloadavg()[0]:.1f})", flush=True)
            result[batch] = r
    return result


def check_same_network(paths: dict[str, Path], x: np.ndarray) -> str:
    """Both directories hold the same network: their pyfunc outputs, side by side."""
    a, b = (np.asarray(mlflow.pyfunc.load_model(str(paths[f])).predict(x)) for f in FLAVORS)
    return (f"max |tflite - keras| = {np.max(np.abs(a - b)):.2e}, outputs in "
            f"[{a.min():.6f}, {a.max():.6f}], top-1 {a.argmax(-1).tolist()} vs "
            f"{b.argmax(-1).tolist()}")


def table(results: dict, args, workers: int) -> str:
    t, k = results["tflite_keras"], results["keras"]
    rows = [("cold start (s)", t["cold"], k["cold"], "{:.2f}", "<= 0.33")]
    for b in BATCHES:
        rows += [
            (f"batch {b}: p50 latency (ms)", t[b]["p50"] * 1e3, k[b]["p50"] * 1e3, "{:.1f}", ""),
            (f"batch {b}: p99 latency (ms)", t[b]["p99"] * 1e3, k[b]["p99"] * 1e3, "{:.1f}", ""),
            (f"batch {b}: throughput (img/s)", t[b]["rps"] * b, k[b]["rps"] * b, "{:.1f}",
             ">= 5"),
        ]
    lines = [f"MobileNetV2 224x224 float32, payload {args.payload}, {args.clients} clients, "
             f"--workers {workers}, up to {args.requests} requests / {args.time_limit:.0f}s "
             "per phase",
             f"| {'metric':<30} | {'tflite_keras':>12} | {'keras':>10} | {'tflite/keras':>12} "
             f"| {'target':>7} |",
             f"|{'-' * 32}|{'-' * 14}|{'-' * 12}|{'-' * 14}|{'-' * 9}|"]
    for name, a, b, fmt, target in rows:
        ratio = a / b if b else float("nan")
        ok = ""
        if target.startswith(">="):
            ok = " ok" if ratio >= float(target[3:]) else " MISS"
        elif target.startswith("<="):
            ok = " ok" if ratio <= float(target[3:]) else " MISS"
        lines.append(f"| {name:<30} | {fmt.format(a):>12} | {fmt.format(b):>10} | "
                     f"{ratio:>9.2f}{ok:<3} | {target:>7} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200,
                        help="requests per phase (flavor x batch size); default 200")
    parser.add_argument("--clients", type=int, default=4, help="concurrent client threads")
    parser.add_argument("--workers", type=int, nargs="+", default=[1],
                        help="server worker processes; several values run several rounds")
    parser.add_argument("--payload", choices=("json", "parquet"), default="parquet",
                        help="request format: a Parquet DataFrame with one flat tensor column "
                             "(default: compact, cheap to decode) or {'inputs': ...} JSON "
                             "(~19 MB at batch 16, whose parsing then dominates both flavors)")
    parser.add_argument("--time-limit", type=float, default=30.0,
                        help="seconds per phase before stopping early; default 30")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    xs = {b: rng.uniform(-1, 1, (b, 224, 224, 3)).astype(np.float32) for b in BATCHES}
    if args.payload == "json":  # short decimals: the JSON parse cost is the same for both
        xs = {b: np.round(x, 3) for b, x in xs.items()}
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as d:
        root = Path(d)
        print("Saving MobileNetV2 as .tflite and as Keras ...", flush=True)
        paths = save_models(root)
        print(f"  same network: {check_same_network(paths, xs[1])}")
        names = {f: mlflow.models.Model.load(str(paths[f])).get_input_schema().input_names()[0]
                 for f in FLAVORS}
        bodies = {f: {b: payload(args.payload, xs[b], names[f] if isinstance(names[f], str)
                                 else None) for b in BATCHES} for f in FLAVORS}
        print(f"  request body: batch 1 {len(bodies['keras'][1][0]) / 1e6:.1f} MB, "
              f"batch 16 {len(bodies['keras'][16][0]) / 1e6:.1f} MB ({args.payload})")
        tables = []
        for workers in args.workers:
            print(f"\n--workers {workers}", flush=True)
            results = {f: bench_flavor(f, paths[f], workers, args, bodies, root) for f in FLAVORS}
            tables.append(table(results, args, workers))
        print()
        print("\n\n".join(tables))


if __name__ == "__main__":
    sys.exit(main())
