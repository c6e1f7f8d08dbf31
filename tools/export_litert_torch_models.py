"""Export the PyTorch test fixtures in tests/data/litert_torch/ with litert-torch.

Not run by ``make test`` (the tests need neither torch nor litert-torch): run it in a
separate virtual environment, never the project's, e.g.::

    python3.11 -m venv /tmp/torchvenv
    /tmp/torchvenv/bin/pip install torch==2.13.0 scikit-learn
    /tmp/torchvenv/bin/pip install litert-torch==0.10.0 -c <(echo torch==2.13.0)
    /tmp/torchvenv/bin/python tools/export_litert_torch_models.py

Three small classifiers of sklearn's digits (local data, nothing downloaded), trained a few
epochs so that their outputs depend on the input: a CNN (convolution, batch norm, ReLU,
pooling, linear), a transformer encoder block (multi-head self-attention, GELU MLP, layer
norm) over the image's rows as tokens, and an LSTM over the rows. Each is exported at a fixed
batch (as litert-torch exports by default), and again with int8 weights by ai-edge-quantizer's
dynamic-range recipe (``dynamic_wi8_afp32``, the quantizer litert-torch installs);
``manifest.json`` records the versions and each model's input shape. The output is
deterministic for one torch build.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "litert_torch"
BATCH = 4


def digits():
    """(x [N, 8, 8] in [0, 1], y [N]) from sklearn's bundled digits."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return (torch.tensor(d.images / 16.0, dtype=torch.float32),
            torch.tensor(d.target, dtype=torch.long))


class SmallCNN(nn.Module):
    """NCHW [B, 1, 8, 8] -> 10 logits."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AvgPool2d(2))
        self.head = nn.Linear(16 * 2 * 2, 10)

    def forward(self, x):
        return self.head(torch.flatten(self.features(x), 1))


class SmallTransformer(nn.Module):
    """[B, 8 rows, 8 pixels] -> 10 logits: row embedding + position, one post-norm encoder
    layer (2 heads, GELU feed-forward), a final layer norm, mean over tokens, linear."""

    def __init__(self, width=16):
        super().__init__()
        self.embed = nn.Linear(8, width)
        self.position = nn.Parameter(torch.randn(1, 8, width) * 0.1)
        self.encoder = nn.TransformerEncoderLayer(width, nhead=2, dim_feedforward=2 * width,
                                                  dropout=0.0, activation="gelu",
                                                  batch_first=True)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        h = self.encoder(self.embed(x) + self.position)
        return self.head(self.norm(h).mean(dim=1))


class SmallLSTM(nn.Module):
    """[B, 8 rows, 8 pixels] -> 10 logits from the last hidden state."""

    def __init__(self, hidden=16):
        super().__init__()
        self.lstm = nn.LSTM(8, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 10)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


MODELS = {
    "cnn": (SmallCNN, lambda x: x[:, None]),
    "transformer": (SmallTransformer, lambda x: x),
    "lstm": (SmallLSTM, lambda x: x),
}


def train(model, x, y, epochs=4, seed=0):
    """A few epochs of Adam: enough for accuracy well above chance (recorded)."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=generator).split(32):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(-1) == y).float().mean())


def export(name, out_dir):
    import litert_torch

    build, shape_input = MODELS[name]
    torch.manual_seed(0)
    model = build()
    x, y = digits()
    x = shape_input(x)
    accuracy = train(model, x, y)
    sample = (x[:BATCH],)
    edge_model = litert_torch.convert(model, sample)
    path = out_dir / f"{name}.tflite"
    edge_model.export(str(path))
    with torch.no_grad():
        expected = model(*sample).numpy()
    got = edge_model(*(s.numpy() for s in sample))
    return {"file": path.name, "input_shape": list(sample[0].shape), "input_dtype": "float32",
            "train_accuracy": round(accuracy, 4),
            "litert_vs_torch_max_abs_diff": float(np.abs(got - expected).max())}


def quantize(name, entry, out_dir):
    """The exported model with int8 weights, float activations (hybrid kernels)."""
    from ai_edge_quantizer import quantizer, recipe

    source = out_dir / entry["file"]
    path = out_dir / f"{name}-dynamic-int8.tflite"
    qt = quantizer.Quantizer(str(source))
    qt.load_quantization_recipe(recipe.dynamic_wi8_afp32())
    qt.quantize().export_model(str(path), overwrite=True)
    return {**{k: entry[k] for k in ("input_shape", "input_dtype", "train_accuracy")},
            "file": path.name, "quantized_from": source.name,
            "ai_edge_quantizer_recipe": "dynamic_wi8_afp32"}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("models", nargs="*", default=list(MODELS))
    args = parser.parse_args()
    import litert_torch
    from importlib.metadata import version

    torch.use_deterministic_algorithms(True)
    args.out.mkdir(parents=True, exist_ok=True)
    manifest_path = args.out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    manifest.update({"torch": torch.__version__, "litert_torch": litert_torch.__version__,
                     "ai_edge_quantizer": version("ai-edge-quantizer"),
                     "exported_by": "tools/export_litert_torch_models.py"})
    models = manifest.setdefault("models", {})
    for name in args.models:
        models[name] = export(name, args.out)
        models[f"{name}-dynamic-int8"] = quantize(name, models[name], args.out)
        print(name, models[name])
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
