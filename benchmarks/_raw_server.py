"""The practical limit for serving a ``.tflite``: a minimal HTTP server calling the raw LiteRT
interpreter (standard library only, no MLflow, no schema, no DataFrame).

``POST /json``: ``{"inputs": [...]}`` -> ``{"predictions": [...]}`` (the body MLflow's
scoring server takes and returns). ``POST /binary``: the batch as raw float32 bytes (C order,
rows of the input's row shape) -> the outputs as raw float32 bytes.
Run: python _raw_server.py MODEL.tflite PORT [NUM_THREADS]
"""

from __future__ import annotations

import json
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from ai_edge_litert.interpreter import Interpreter


def main():
    path, port = sys.argv[1], int(sys.argv[2])
    threads = int(sys.argv[3]) if len(sys.argv) > 3 else None
    interpreter = Interpreter(model_path=path, num_threads=threads)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    row_shape = tuple(inp["shape"][1:])
    state = {"batch": int(inp["shape"][0])}
    lock = threading.Lock()  # one interpreter: every invoke already uses all the cores

    def predict(x: np.ndarray) -> np.ndarray:
        with lock:
            if x.shape[0] != state["batch"]:
                interpreter.resize_tensor_input(inp["index"], x.shape)
                interpreter.allocate_tensors()
                state["batch"] = x.shape[0]
            interpreter.set_tensor(inp["index"], x)
            interpreter.invoke()
            return interpreter.get_tensor(out["index"])

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as MLflow's server

        def setup(self):
            super().setup()
            # Headers and body go out in separate writes: without this, Nagle's algorithm
            # waits for the client's delayed ACK (~40 ms) before sending the body.
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, *args):
            pass

        def do_GET(self):
            self._answer(b"ok", "text/plain")

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.path == "/json":
                x = np.asarray(json.loads(body)["inputs"], dtype=np.float32)
                y = predict(x)
                self._answer(json.dumps({"predictions": y.tolist()}).encode(),
                             "application/json")
            else:
                x = np.frombuffer(body, dtype=np.float32).reshape((-1, *row_shape))
                self._answer(predict(x).astype(np.float32).tobytes(),
                             "application/octet-stream")

        def _answer(self, data: bytes, content_type: str):
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    main()
