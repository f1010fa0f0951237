#!/usr/bin/env python3
# Requires (see requirements.txt): Python 3.11, numpy==2.4.6, tokenizers==0.23.3. No torch.
"""Independent reference embeddings for sentence-transformers/all-MiniLM-L6-v2.

Our Rust backend runs the model through candle. To check it against something that shares
none of its code, this script re-implements the BERT encoder forward in plain NumPy (float64),
reads model.safetensors by parsing the format itself, tokenizes with the Python `tokenizers`
package, and applies the model card's recipe: mean pooling over the attention mask, then L2
normalisation. It writes tests/reference/minilm_reference.json, which
`backend::bert::tests::embeddings_match_independent_numpy_reference` compares against.

Usage:
    python3 -m venv .venv-ref && .venv-ref/bin/pip install -r tests/reference/requirements.txt
    .venv-ref/bin/python tests/reference/make_minilm_reference.py [MODEL_DIR]

MODEL_DIR defaults to ~/.cache/tiergate/models/all-minilm-l6-v2 (`tiergate models fetch`).
"""

import hashlib
import json
import math
import os
import struct
import sys

import numpy as np
import tokenizers

TEXTS = [
    "The cat sits on the mat.",
    "A cat is sitting on a rug.",
    "Stock markets fell sharply today.",
    "The committee postponed its decision on the new railway line until the engineers had "
    "finished surveying the flood plain, which several local farmers said had been under "
    "water for most of the winter.",
    "Café crème brûlée in Zürich: a naïve façade near São Paulo's 東京 restaurant.",
    "Order 66 shipped 3,141 units on 2024-07-15 at $12.50 each (ref #A7-0093).",
    "How do I reset my password?",
    "Steps to recover a forgotten account password.",
]

# Values stated in /work/shared/MODELS.md, computed by others outside candle.
EXPECTED_COS = {(0, 1): 0.7689, (0, 2): 0.0462}

SAFETENSORS_DTYPES = {"F32": "<f4", "F16": "<f2", "I64": "<i8"}


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_safetensors(path):
    """Parses the safetensors layout: u64 LE header length, JSON header, raw LE arrays."""
    with open(path, "rb") as f:
        blob = f.read()
    (header_len,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + header_len])
    data = blob[8 + header_len :]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        dtype = np.dtype(SAFETENSORS_DTYPES[info["dtype"]])
        array = np.frombuffer(data[start:end], dtype=dtype).reshape(info["shape"])
        # Compute in float64 so that the reference's own rounding is negligible next to the
        # 1e-4 tolerance the Rust test allows for candle's float32 arithmetic.
        tensors[name] = array.astype(np.float64)
    return tensors


def layer_norm(x, weight, bias, eps):
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


_erf = np.vectorize(math.erf)


def gelu_erf(x):
    # BERT's "gelu" is the exact erf form, not the tanh approximation.
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def linear(w, prefix, x):
    # PyTorch Linear layout: weight is [out, in].
    return x @ w[prefix + ".weight"].T + w[prefix + ".bias"]


def softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def encoder_layer(w, cfg, i, h):
    p = f"encoder.layer.{i}"
    seq, hidden = h.shape
    heads = cfg["num_attention_heads"]
    head_dim = hidden // heads
    eps = cfg["layer_norm_eps"]

    def split(t):  # [seq, hidden] -> [heads, seq, head_dim]
        return t.reshape(seq, heads, head_dim).transpose(1, 0, 2)

    q = split(linear(w, p + ".attention.self.query", h))
    k = split(linear(w, p + ".attention.self.key", h))
    v = split(linear(w, p + ".attention.self.value", h))
    # One unpadded sequence at a time, so every key is real and no mask is needed.
    probs = softmax(q @ k.transpose(0, 2, 1) / math.sqrt(head_dim))
    ctx = (probs @ v).transpose(1, 0, 2).reshape(seq, hidden)
    attn = layer_norm(
        linear(w, p + ".attention.output.dense", ctx) + h,
        w[p + ".attention.output.LayerNorm.weight"],
        w[p + ".attention.output.LayerNorm.bias"],
        eps,
    )
    inter = gelu_erf(linear(w, p + ".intermediate.dense", attn))
    return layer_norm(
        linear(w, p + ".output.dense", inter) + attn,
        w[p + ".output.LayerNorm.weight"],
        w[p + ".output.LayerNorm.bias"],
        eps,
    )


def embed(w, cfg, ids):
    ids = np.asarray(ids)
    positions = np.arange(len(ids))
    h = (
        w["embeddings.word_embeddings.weight"][ids]
        + w["embeddings.position_embeddings.weight"][positions]
        + w["embeddings.token_type_embeddings.weight"][np.zeros_like(ids)]
    )
    h = layer_norm(
        h,
        w["embeddings.LayerNorm.weight"],
        w["embeddings.LayerNorm.bias"],
        cfg["layer_norm_eps"],
    )
    for i in range(cfg["num_hidden_layers"]):
        h = encoder_layer(w, cfg, i, h)
    pooled = h.mean(axis=0)  # mean over the mask = over all tokens of an unpadded input
    return pooled / np.linalg.norm(pooled)


def main():
    default_dir = os.path.expanduser("~/.cache/tiergate/models/all-minilm-l6-v2")
    model_dir = sys.argv[1] if len(sys.argv) > 1 else default_dir
    out_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "minilm_reference.json")

    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    with open(os.path.join(model_dir, "1_Pooling", "config.json")) as f:
        assert json.load(f)["pooling_mode_mean_tokens"], "expected mean pooling"
    weights_path = os.path.join(model_dir, "model.safetensors")
    tokenizer_path = os.path.join(model_dir, "tokenizer.json")
    weights = read_safetensors(weights_path)

    tok = tokenizers.Tokenizer.from_file(tokenizer_path)
    # tokenizer.json pads to a fixed 128 and truncates; the reference must see the bare ids.
    tok.no_padding()
    tok.no_truncation()

    entries = []
    for text in TEXTS:
        ids = tok.encode(text, add_special_tokens=True).ids
        vector = embed(weights, cfg, ids)
        entries.append({"text": text, "ids": ids, "vector": vector})

    for (a, b), expected in EXPECTED_COS.items():
        cos = float(entries[a]["vector"] @ entries[b]["vector"])
        print(f"cos({TEXTS[a]!r}, {TEXTS[b]!r}) = {cos:.4f} (MODELS.md: {expected:.4f})")
        if round(cos, 4) != expected:
            sys.exit(f"mismatch with MODELS.md for pair {(a, b)}: {cos:.6f} != {expected}")

    doc = {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "generator": "tests/reference/make_minilm_reference.py (NumPy float64 forward)",
        "versions": {"numpy": np.__version__, "tokenizers": tokenizers.__version__},
        "model_safetensors_sha256": sha256_file(weights_path),
        "tokenizer_json_sha256": sha256_file(tokenizer_path),
        "pooling": "mean over attention mask, then L2 normalisation",
        "entries": [
            {
                "text": e["text"],
                "ids": e["ids"],
                # 8 significant digits: far finer than the 1e-4 test tolerance, small file.
                "embedding": [float(f"{x:.8g}") for x in e["vector"]],
            }
            for e in entries
        ],
    }
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {out_path} ({os.path.getsize(out_path)} bytes, {len(entries)} texts)")


if __name__ == "__main__":
    main()
