"""Serving throughput of ``mlflow models serve`` as a ratio to a raw LiteRT server, same run.

Model: MobileNetV2 64x64x3 -> 10, float32, batch-norm statistics calibrated on data (its
outputs depend on the input; generated locally, cached). Servers, one at a time on 127.0.0.1
so they never compete for the 2 cores, each with one worker:

* ``raw binary``: ``_raw_server.py``, a minimal standard-library HTTP server calling the raw
  interpreter, the batch as raw float32 bytes (the practical limit);
* ``raw json``: the same server, ``{"inputs": ...}`` JSON in and ``{"predictions": ...}`` out
  (the same body MLflow's scoring server takes);
* ``mlflow json`` / ``mlflow csv`` / ``mlflow parquet``: ``mlflow models serve --env-manager
  local`` with this flavor: ``{"inputs": ...}`` JSON, a CSV DataFrame with one column per
  input value, a Parquet DataFrame with one flat tensor column (both reshaped to the
  input's shape). MLflow's scoring server refuses CSV for a model whose signature has tensor
  specs ("TensorSpec only supports numpy types"), so the CSV row serves the same file saved
  with ``signature=False`` (the flavor reshapes the flat rows itself);
* ``mlserver v2 json`` (with ``--mlserver-env DIR``, a virtualenv holding mlserver and
  mlserver-mlflow): MLServer's V2 inference protocol through the mlserver-mlflow runtime,
  which loads this flavor's pyfunc (MLflow 3.17 dropped ``--enable-mlserver``; see the README).

For each row and batch (1, 16): ``--clients`` client threads (one ``requests.Session`` each)
send up to ``--requests`` requests, bounded by ``--time-limit`` seconds; reported: p50
latency and throughput (images/s), and throughput as a ratio to raw binary and to raw JSON.
Every server's answer is checked against the raw interpreter's before it is measured.
Run: .venv/bin/python benchmarks/serve.py [--requests N] [--clients C]
     [--rows raw-binary raw-json mlflow-json mlflow-csv mlflow-parquet] [--mlserver-env DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import requests  # noqa: E402

import mlflow  # noqa: E402
from _models import app, inputs_for  # noqa: E402  (puts tests/ on sys.path)
from servers import MLFLOW, clean_env, free_port, running  # noqa: E402

BATCHES = (1, 16)
ROWS = ("raw-binary", "raw-json", "mlflow-json", "mlflow-csv", "mlflow-parquet",
        "mlserver-v2-json")
HERE = Path(__file__).resolve().parent


def bodies(row: str, x: np.ndarray, input_name: str) -> tuple[str, bytes, str]:
    """(path, request body, content type) of one row's request for the batch ``x``."""
    if row == "raw-binary":
        return "/binary", x.tobytes(), "application/octet-stream"
    if row in ("raw-json", "mlflow-json"):
        return ("/json" if row == "raw-json" else "/invocations",
                json.dumps({"inputs": x.tolist()}).encode(), "application/json")
    if row == "mlserver-v2-json":
        tensor = {"name": input_name, "shape": list(x.shape), "datatype": "FP32",
                  "data": x.reshape(-1).tolist()}
        return "/v2/models/tflite/infer", json.dumps({"inputs": [tensor]}).encode(), \
            "application/json"
    import pandas as pd

    flat = x.reshape(len(x), -1)
    buffer = io.BytesIO()
    if row == "mlflow-csv":
        pd.DataFrame(flat).to_csv(buffer, index=False)
        return "/invocations", buffer.getvalue(), "text/csv"
    pd.DataFrame({input_name: list(flat)}).to_parquet(buffer)
    return "/invocations", buffer.getvalue(), "application/vnd.apache.parquet"


def answer(row: str, response: requests.Response, batch: int) -> np.ndarray:
    if row == "raw-binary":
        return np.frombuffer(response.content, dtype=np.float32).reshape(batch, -1)
    data = response.json()
    if row == "mlserver-v2-json":
        out = data["outputs"][0]
        return np.asarray(out["data"], np.float32).reshape(out["shape"])
    return np.asarray(data["predictions"], np.float32)


def server(row: str, model_dir: Path, tflite: Path, log: Path, mlserver_env: Path | None):
    port = free_port()
    if row.startswith("raw"):
        args = [sys.executable, str(HERE / "_raw_server.py"), str(tflite), str(port),
                str(os.cpu_count() or 1)]
        return running(args, port, "/", log)
    if row.startswith("mlflow"):
        args = [MLFLOW, "models", "serve", "-m", str(model_dir), "--env-manager", "local",
                "--host", "127.0.0.1", "-p", str(port), "--workers", "1"]
        return running(args, port, "/ping", log)
    root = log.parent / "mlserver"
    root.mkdir(exist_ok=True)
    (root / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": port, "grpc_port": free_port(),
        "metrics_port": free_port(), "parallel_workers": 0}))
    (root / "model-settings.json").write_text(json.dumps({
        "name": "tflite", "implementation": "mlserver_mlflow.MLflowRuntime",
        "parameters": {"uri": str(model_dir)}}))
    args = [str(mlserver_env / "bin" / "mlserver"), "start", str(root)]
    return running(args, port, "/v2/models/tflite/ready", log, timeout=240,
                   env=clean_env(PATH=f"{mlserver_env / 'bin'}:{os.environ['PATH']}"))


def load(url: str, body: bytes, content_type: str, requests_total: int, clients: int,
         time_limit: float) -> dict:
    """``clients`` threads share a budget of ``requests_total`` requests, stopping early at
    ``time_limit`` seconds. Returns the p50 latency and the throughput (requests/s)."""
    lock = threading.Lock()
    budget = [requests_total]
    latencies: list[float] = []
    errors: list[str] = []
    headers = {"Content-Type": content_type}

    def client():
        with requests.Session() as session:
            session.post(url, data=body, headers=headers, timeout=120)  # warm-up
            barrier.wait()
            deadline = time.monotonic() + time_limit
            while time.monotonic() < deadline:
                with lock:
                    if budget[0] <= 0:
                        return
                    budget[0] -= 1
                start = time.perf_counter()
                r = session.post(url, data=body, headers=headers, timeout=120)
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
    return {"n": len(latencies),
            "p50": statistics.median(latencies) if latencies else float("nan"),
            "rps": len(latencies) / wall if wall > 0 else float("nan")}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300, help="requests per phase")
    parser.add_argument("--clients", type=int, default=4, help="concurrent client threads")
    parser.add_argument("--time-limit", type=float, default=20.0, help="seconds per phase")
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS[:5]))
    parser.add_argument("--mlserver-env", type=Path,
                        help="a virtualenv with mlserver + mlserver-mlflow: adds its row")
    args = parser.parse_args()
    rows = list(args.rows)
    if args.mlserver_env and "mlserver-v2-json" not in rows:
        rows.append("mlserver-v2-json")
    if "mlserver-v2-json" in rows and not args.mlserver_env:
        parser.error("the mlserver-v2-json row needs --mlserver-env")

    data = app("MobileNetV2")
    xs = {b: inputs_for(data, b, seed=b) for b in BATCHES}
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as d:
        root = Path(d)
        model_dir = root / "model"
        mlflow.tflite_keras.save_model(data, str(model_dir))
        mlflow.tflite_keras.save_model(data, str(root / "model-no-signature"), signature=False)
        tflite = model_dir / "model.tflite"
        name = mlflow.models.Model.load(str(model_dir)).get_input_schema().input_names()[0]
        expected = {b: mlflow.pyfunc.load_model(str(model_dir)).predict(x)
                    for b, x in xs.items()}
        spread = float(np.std(expected[16], axis=0).mean())
        print(f"MobileNetV2 64x64 float32 ({len(data) / 1e6:.1f} MB); outputs depend on the "
              f"input (mean std across a batch {spread:.3f}); {args.clients} clients, up to "
              f"{args.requests} requests / {args.time_limit:.0f} s per phase", flush=True)
        for row in rows:
            served = root / "model-no-signature" if row == "mlflow-csv" else model_dir
            with server(row, served, tflite, root / f"{row}.log", args.mlserver_env) as base:
                results[row] = {}
                for batch, x in xs.items():
                    path, body, content_type = bodies(row, x, name)
                    r = requests.post(base + path, data=body,
                                      headers={"Content-Type": content_type}, timeout=120)
                    if r.status_code != 200:
                        raise RuntimeError(f"{row}: {r.status_code} {r.text[:800]}")
                    np.testing.assert_allclose(answer(row, r, batch), expected[batch],
                                               rtol=1e-5, atol=1e-6)
                    result = load(base + path, body, content_type, args.requests,
                                  args.clients, args.time_limit)
                    result["body"] = len(body)
                    results[row][batch] = result
                    print(f"  {row:<17} batch {batch:>2}: {result['n']} requests, body "
                          f"{len(body) / 1e3:.0f} kB, p50 {result['p50'] * 1e3:.1f} ms, "
                          f"{result['rps'] * batch:.0f} images/s "
                          f"(load average {os.getloadavg()[0]:.1f})", flush=True)
    print()
    print("| server, payload | batch | body kB | p50 ms | images/s | / raw binary | / raw json |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        for batch in BATCHES:
            r = results[row][batch]

            def ratio(ref):
                return (f"{r['rps'] / results[ref][batch]['rps']:.3f}" if ref in results
                        else "-")
            print(f"| {row} | {batch} | {r['body'] / 1e3:.0f} | {r['p50'] * 1e3:.1f} | "
                  f"{r['rps'] * batch:.0f} | {ratio('raw-binary')} | {ratio('raw-json')} |")


if __name__ == "__main__":
    sys.exit(main())
