#!/usr/bin/env python3
"""Reference fixtures for SmolLM2-135M-Instruct Q4_1 from two independent
implementations: llama.cpp (through llama-cpp-python) and Hugging Face
transformers (GGUF loader, dequantized to float32, on CPU).

Writes, relative to the repository root:
  engine/tests/fixtures/reference.json
  engine/tests/fixtures/last_logits/<prompt>.<impl>.f32   (impl: llama_cpp | transformers)
  engine/tests/fixtures/tokenizer_corpus.json

Usage:
  python scripts/reference/make_fixtures.py --model /path/to/SmolLM2-135M-Instruct.Q4_1.gguf
  (--parts llama_cpp or --parts transformers recomputes one implementation and
   keeps the other one's results from the existing fixture files.)

Greedy decoding is a plain argmax over the raw logits at every step, exactly
N_GREEDY new tokens, never stopping at EOS. No sampler, no penalties.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import struct
import sys
import time
from pathlib import Path

import numpy as np

# Everything is local: no hub look-ups, no hub kernels.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("USE_HUB_KERNELS", "0")

N_GREEDY = 32
N_CTX = 2048
TOP_K = 5
REPO = Path(__file__).resolve().parents[2]
FIX = REPO / "engine" / "tests" / "fixtures"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EXPECTED_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
IMPLS = ("llama_cpp", "transformers")

from reference_inputs import PROMPTS, tokenizer_corpus  # noqa: E402 (beside this script)

# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------

def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def gguf_metadata(path: Path) -> dict:
    import gguf
    r = gguf.GGUFReader(str(path))
    wanted = [
        "general.architecture", "general.name",
        "tokenizer.ggml.model", "tokenizer.ggml.pre",
        "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token",
        "tokenizer.ggml.add_space_prefix",
        "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id",
        "tokenizer.chat_template",
        "llama.context_length", "llama.embedding_length", "llama.block_count",
        "llama.feed_forward_length", "llama.attention.head_count",
        "llama.attention.head_count_kv", "llama.rope.freq_base",
        "llama.attention.layer_norm_rms_epsilon", "llama.vocab_size",
        "llama.rope.dimension_count", "general.file_type",
    ]
    out = {}
    for k in wanted:
        f = r.fields.get(k)
        if f is None:
            out[k] = None
            continue
        v = f.contents()
        if isinstance(v, (np.generic,)):
            v = v.item()
        out[k] = v
    tokens = r.fields["tokenizer.ggml.tokens"].contents()
    out["_n_tokens"] = len(tokens)
    tensor_types = {}
    for t in r.tensors:
        tensor_types.setdefault(t.tensor_type.name, 0)
        tensor_types[t.tensor_type.name] += 1
    out["_tensor_types"] = tensor_types
    out["_tensors_of_interest"] = {
        t.name: t.tensor_type.name for t in r.tensors
        if t.name in ("token_embd.weight", "output.weight", "output_norm.weight",
                      "blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.ffn_down.weight")
    }
    return out, [str(t) for t in tokens]


def topk(logits: np.ndarray, k: int = TOP_K) -> list:
    # Stable ordering: larger logit first, smaller id first on exact ties.
    idx = np.lexsort((np.arange(logits.shape[0]), -logits.astype(np.float64)))[:k]
    return [[int(i), round(float(logits[i]), 5)] for i in idx]


def argmax(logits: np.ndarray) -> int:
    return int(np.argmax(logits))  # first index on exact ties


def write_f32(path: Path, v: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.asarray(v, dtype="<f4").tofile(path)


def read_f32(path: Path) -> np.ndarray:
    return np.fromfile(path, dtype="<f4")


# --------------------------------------------------------------------------
# llama.cpp
# --------------------------------------------------------------------------

LLAMA_SETTINGS = dict(n_ctx=N_CTX, n_batch=512, n_ubatch=512, n_threads=2, n_threads_batch=2,
                      seed=0, logits_all=True, flash_attn=False, type_k=0, type_v=0,
                      n_gpu_layers=0, use_mmap=True, verbose=False)


def run_llama(model_path: Path, prompts: list, corpus: list, add_bos: bool) -> dict:
    import llama_cpp
    import llama_cpp.llama_cpp as _ll
    from llama_cpp import Llama

    # Plain CPU buffers only: no "extra" buffer types (AMX / weight repacking). With -march=native on a
    # CPU that advertises AMX, ggml's AMX matmul ran into SIGILL (tilezero) in this VM, and the plain
    # path (ggml_vec_dot_q4_1_q8_1 etc.) is the canonical one anyway. Llama() does not expose
    # use_extra_bufts, so wrap the default-params constructor it calls.
    _orig_default = _ll.llama_model_default_params

    def _model_params():
        mp = _orig_default()
        mp.use_extra_bufts = False
        return mp

    _ll.llama_model_default_params = _model_params
    settings = dict(LLAMA_SETTINGS)
    try:
        llm = Llama(model_path=str(model_path), **settings)
    finally:
        _ll.llama_model_default_params = _orig_default
    assert llm.model_params.use_extra_bufts is False
    eos = llm.token_eos()
    n_vocab = llm.n_vocab()
    res = {"version": llama_cpp.__version__, "prompts": {}, "corpus": [], "eos": eos,
           "settings": {k: v for k, v in settings.items() if k != "verbose"}}
    res["settings"]["type_k_v"] = "f32 (GGML_TYPE_F32 = 0)"
    res["settings"]["use_extra_bufts"] = False
    res["settings"]["system_info"] = llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip()

    for p in prompts:
        t0 = time.time()
        ids = llm.tokenize(p["text"].encode("utf-8"), add_bos=add_bos, special=True)
        llm.reset()
        llm.eval(ids)
        last = np.array(llm.scores[llm.n_tokens - 1, :n_vocab], dtype=np.float32)
        logits = last
        greedy, top = [], []
        for step in range(N_GREEDY):
            tok = argmax(logits)
            greedy.append(tok)
            top.append(topk(logits))
            if step + 1 < N_GREEDY:
                llm.eval([tok])
                logits = np.array(llm.scores[llm.n_tokens - 1, :n_vocab], dtype=np.float32)
        eos_at = greedy.index(eos) if eos in greedy else None
        res["prompts"][p["name"]] = {
            "prompt_ids": [int(i) for i in ids], "greedy_ids": greedy, "top5": top,
            "eos_at": eos_at, "_last": last,
        }
        print(f"  llama.cpp {p['name']}: {len(ids)} prompt tokens, {time.time() - t0:.1f}s", flush=True)

    for s in corpus:
        res["corpus"].append([int(i) for i in llm.tokenize(s.encode("utf-8"), add_bos=False, special=True)])

    # Chat template rendering by llama-cpp-python (for a cross-check of the "text").
    try:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter
        tmpl = llm.metadata.get("tokenizer.chat_template")
        fmt = Jinja2ChatFormatter(template=tmpl, eos_token=llm._model.token_get_text(eos),
                                  bos_token=llm._model.token_get_text(llm.token_bos()))
        res["chat_render"] = {p["name"]: fmt(messages=p["messages"]).prompt
                              for p in prompts if p["kind"] == "chat"}
    except Exception as e:  # pragma: no cover - informative only
        res["chat_render_error"] = repr(e)
    return res


# --------------------------------------------------------------------------
# transformers
# --------------------------------------------------------------------------

_HF_TOK = None


def hf_tokenizer(model_path: Path):
    global _HF_TOK
    if _HF_TOK is None:
        from transformers import AutoTokenizer
        _HF_TOK = AutoTokenizer.from_pretrained(str(model_path.parent), gguf_file=model_path.name)
    return _HF_TOK


def hf_load(model_path: Path):
    """float32 dense model. For the llama architecture transformers' legacy GGUF loader is used:
    gguf-py's numpy `dequantize` on every tensor, then attn_q/attn_k reverse-permuted
    (LlamaTensorProcessor._reverse_permute_weights) so HF's rotate-half RoPE applies."""
    import torch
    from transformers import AutoModelForCausalLM
    d, name = str(model_path.parent), model_path.name
    kw = {}
    try:  # transformers >= 5.2x: ask explicitly for a dense, dequantized model
        from transformers.utils.quantization_config import GgufConfig
        kw["quantization_config"] = GgufConfig(dequantize=True)
    except Exception:
        pass
    try:
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32, **kw)
    except TypeError:
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, torch_dtype=torch.float32)
    model.eval()
    for n, prm in model.named_parameters():
        assert prm.dtype == torch.float32, (n, prm.dtype)
    return hf_tokenizer(model_path), model


def run_hf(model_path: Path, prompts: list, corpus: list, add_bos: bool, bos_id: int, eos_id: int) -> dict:
    import torch
    import transformers

    torch.set_num_threads(int(os.environ.get("REF_TORCH_THREADS", "1")))
    tok, model = hf_load(model_path)
    res = {"version": transformers.__version__, "torch": torch.__version__, "prompts": {}, "corpus": [],
           "model_dtype": str(next(model.parameters()).dtype),
           "config": {k: getattr(model.config, k, None) for k in
                      ("rope_theta", "rms_norm_eps", "tie_word_embeddings", "num_attention_heads",
                       "num_key_value_heads", "hidden_size", "num_hidden_layers", "vocab_size",
                       "max_position_embeddings")}}
    if res["config"].get("rope_theta") is None:
        rp = getattr(model.config, "rope_parameters", None)
        res["config"]["rope_parameters"] = rp if isinstance(rp, (dict, type(None))) else str(rp)
    res["tokenizer_class"] = type(tok).__name__
    res["add_special_tokens_true_example"] = tok.encode("Hello", add_special_tokens=True)
    res["pre_tokenizer"] = str(tok.backend_tokenizer.pre_tokenizer) if hasattr(tok, "backend_tokenizer") else None

    for p in prompts:
        t0 = time.time()
        ids = tok.encode(p["text"], add_special_tokens=False)
        if add_bos:
            ids = [bos_id] + ids
        greedy, top = [], []
        with torch.no_grad():
            out = model(input_ids=torch.tensor([ids]), use_cache=True)
            past = out.past_key_values
            logits = out.logits[0, -1].float().numpy().copy()
            last = logits
            for step in range(N_GREEDY):
                t = argmax(logits)
                greedy.append(t)
                top.append(topk(logits))
                if step + 1 < N_GREEDY:
                    out = model(input_ids=torch.tensor([[t]]), past_key_values=past, use_cache=True)
                    past = out.past_key_values
                    logits = out.logits[0, -1].float().numpy().copy()
        eos_at = greedy.index(eos_id) if eos_id in greedy else None
        res["prompts"][p["name"]] = {
            "prompt_ids": [int(i) for i in ids], "greedy_ids": greedy, "top5": top,
            "eos_at": eos_at, "_last": last,
        }
        print(f"  transformers {p['name']}: {len(ids)} prompt tokens, {time.time() - t0:.1f}s", flush=True)

    for s in corpus:
        res["corpus"].append([int(i) for i in tok.encode(s, add_special_tokens=False)])
    return res


def hf_render_chat(model_path: Path, prompts: list, template: str) -> dict:
    """Render chat prompts with transformers' apply_chat_template (the GGUF's template)."""
    tok = hf_tokenizer(model_path)
    out = {}
    src = "tokenizer"
    if not getattr(tok, "chat_template", None):
        tok.chat_template = template
        src = "gguf metadata assigned to tokenizer.chat_template"
    for p in prompts:
        if p["kind"] == "chat":
            out[p["name"]] = tok.apply_chat_template(p["messages"], tokenize=False, add_generation_prompt=True)
    return out, src


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------

def strip_private(d: dict) -> dict:
    return {k: v for k, v in d.items() if not k.startswith("_")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.environ.get("FERRINFER_SMOLLM2_GGUF", f"/work/models/{MODEL_FILE}"))
    ap.add_argument("--parts", default="llama_cpp,transformers",
                    help="comma list of implementations to (re)compute; the others are read from --cache "
                         "(if there) or else from the existing fixtures")
    ap.add_argument("--cache", default=None,
                    help="folder (outside the repo) where each computed implementation's raw results are "
                         "pickled, and read back for parts not recomputed")
    ap.add_argument("--no-write", action="store_true",
                    help="only compute the parts (to --cache); do not assemble the fixtures")
    args = ap.parse_args()
    model_path = Path(args.model).resolve()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    for p in parts:
        assert p in IMPLS, p

    timings = {}
    t0 = time.time()
    sha = sha256_file(model_path)
    nbytes = model_path.stat().st_size
    if sha != EXPECTED_SHA256:
        print(f"WARNING: model sha256 {sha} != expected {EXPECTED_SHA256}", file=sys.stderr)
    meta, vocab = gguf_metadata(model_path)
    add_bos = bool(meta["tokenizer.ggml.add_bos_token"]) if meta["tokenizer.ggml.add_bos_token"] is not None else False
    bos_id = int(meta["tokenizer.ggml.bos_token_id"])
    eos_id = int(meta["tokenizer.ggml.eos_token_id"])
    template = meta["tokenizer.chat_template"]
    timings["metadata"] = time.time() - t0
    print("metadata:", json.dumps({k: v for k, v in meta.items() if k != "tokenizer.chat_template"}, default=str))

    prev = None
    if (FIX / "reference.json").exists():
        prev = json.loads((FIX / "reference.json").read_text())

    # Prompt texts. Chat prompts: rendered by transformers' apply_chat_template.
    prompts = [dict(p) for p in PROMPTS]
    try:
        import transformers  # noqa: F401
        have_hf = True
    except ImportError:
        have_hf = False
    if have_hf or prev is None:
        t0 = time.time()
        rendered, render_src = hf_render_chat(model_path, prompts, template)
        timings["chat_render"] = time.time() - t0
    else:
        rendered = {q["name"]: q["text"] for q in prev["prompts"] if q["kind"] == "chat"}
        render_src = prev.get("chat_template_source", "previous fixture")
    for p in prompts:
        if p["kind"] == "chat":
            p["text"] = rendered[p["name"]]

    corpus = tokenizer_corpus()
    results = {}
    if "llama_cpp" in parts:
        t0 = time.time()
        results["llama_cpp"] = run_llama(model_path, prompts, corpus, add_bos)
        timings["llama_cpp"] = time.time() - t0
    if "transformers" in parts:
        t0 = time.time()
        results["transformers"] = run_hf(model_path, prompts, corpus, add_bos, bos_id, eos_id)
        timings["transformers"] = time.time() - t0

    import pickle
    cache = Path(args.cache) if args.cache else None
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        for impl, r in results.items():
            with open(cache / f"{impl}.pkl", "wb") as f:
                pickle.dump({"prompts_text": [p["text"] for p in prompts], "corpus": corpus, "res": r}, f)
        for impl in IMPLS:
            if impl not in results and (cache / f"{impl}.pkl").exists():
                with open(cache / f"{impl}.pkl", "rb") as f:
                    c = pickle.load(f)
                assert c["prompts_text"] == [p["text"] for p in prompts] and c["corpus"] == corpus, \
                    f"cached {impl} results were made from other prompts/corpus; recompute"
                results[impl] = c["res"]
                print(f"{impl}: results read from {cache}")
    print("timings (s):", {k: round(v, 1) for k, v in timings.items()}, flush=True)
    if args.no_write:
        return

    # Reuse results of implementations not recomputed.
    prev_corpus = None
    if (FIX / "tokenizer_corpus.json").exists():
        prev_corpus = json.loads((FIX / "tokenizer_corpus.json").read_text())
    for impl in IMPLS:
        if impl in results:
            continue
        if prev is None or prev_corpus is None:
            sys.exit(f"no previous fixtures to take {impl} results from; run with --parts including {impl}")
        r = {"prompts": {}, "corpus": [l[impl] for l in prev_corpus["lines"]]}
        gb = prev["generated_by"]
        if impl == "llama_cpp":
            r["version"] = gb["llama_cpp_python"]
            r["settings"] = prev.get("llama_cpp_settings")
        else:
            r["version"] = gb["transformers"]
            r["torch"] = gb["torch"]
        for q in prev["prompts"]:
            d = dict(q[impl])
            d["_last"] = read_f32(FIX / "last_logits" / f"{q['name']}.{impl}.f32")
            r["prompts"][q["name"]] = d
        results[impl] = r
        assert [l["text"] for l in prev_corpus["lines"]] == corpus, "corpus changed; recompute both parts"

    import gguf as _gguf
    try:
        from importlib.metadata import version as _v
        gguf_version = _v("gguf")
    except Exception:
        gguf_version = getattr(_gguf, "__version__", None)

    L, H = results["llama_cpp"], results["transformers"]
    out_prompts = []
    (FIX / "last_logits").mkdir(parents=True, exist_ok=True)
    for p in prompts:
        a, b = L["prompts"][p["name"]], H["prompts"][p["name"]]
        write_f32(FIX / "last_logits" / f"{p['name']}.llama_cpp.f32", a["_last"])
        write_f32(FIX / "last_logits" / f"{p['name']}.transformers.f32", b["_last"])
        la, lb = a["_last"].astype(np.float64), b["_last"].astype(np.float64)
        rel = float(np.linalg.norm(la - lb) / np.linalg.norm(lb))
        first_diff = next((i for i, (x, y) in enumerate(zip(a["greedy_ids"], b["greedy_ids"])) if x != y), None)
        entry = {"name": p["name"], "kind": p["kind"]}
        if p["kind"] == "chat":
            entry["messages"] = p["messages"]
        entry["text"] = p["text"]
        entry["n_prompt_tokens"] = {"llama_cpp": len(a["prompt_ids"]), "transformers": len(b["prompt_ids"])}
        entry["ids_agree"] = a["prompt_ids"] == b["prompt_ids"]
        entry["eos_at"] = {"llama_cpp": a["eos_at"], "transformers": b["eos_at"]}
        entry["greedy_agree"] = first_diff is None
        entry["greedy_first_diff"] = first_diff
        entry["last_logits_rel_l2_llama_vs_hf"] = round(rel, 8)
        entry["last_logits_max_abs_diff"] = round(float(np.max(np.abs(la - lb))), 6)
        ca, cb = la - la.mean(), lb - lb.mean()
        entry["last_logits_rel_l2_centered"] = round(float(np.linalg.norm(ca - cb) / np.linalg.norm(cb)), 8)
        pa, pb = np.exp(la - la.max()), np.exp(lb - lb.max())
        pa, pb = pa / pa.sum(), pb / pb.sum()
        entry["last_probs_max_abs_diff"] = round(float(np.max(np.abs(pa - pb))), 6)
        entry["last_probs_kl_hf_llama"] = round(float(np.sum(pb * (np.log(pb + 1e-30) - np.log(pa + 1e-30)))), 8)
        if first_diff is not None:
            ta, tb = a["top5"][first_diff], b["top5"][first_diff]
            entry["first_diff_top2_margin"] = {"llama_cpp": round(ta[0][1] - ta[1][1], 5),
                                               "transformers": round(tb[0][1] - tb[1][1], 5)}
        entry["llama_cpp"] = strip_private(a)
        entry["transformers"] = strip_private(b)
        out_prompts.append(entry)

    chat_check = {}
    if "chat_render" in L:
        for name, s in L["chat_render"].items():
            chat_check[name] = (s == rendered[name])

    ref = {
        "model": {"file": MODEL_FILE, "sha256": sha, "bytes": nbytes},
        "generated_by": {
            "llama_cpp_python": L["version"], "transformers": H["version"], "torch": H["torch"],
            "gguf": gguf_version, "numpy": np.__version__,
            "python": sys.version.split()[0],
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "script": "scripts/reference/make_fixtures.py",
        },
        "n_greedy": N_GREEDY,
        "gguf_metadata": {k: v for k, v in meta.items() if not k.startswith("_")},
        "gguf_tensor_types": meta["_tensor_types"],
        "gguf_tensors_of_interest": meta["_tensors_of_interest"],
        "bos_policy": f"BOS prepended = tokenizer.ggml.add_bos_token = {add_bos}",
        "eos_token_id": eos_id,
        "notes": [
            "greedy = argmax of raw logits at every step (first index on exact ties); exactly n_greedy tokens, EOS does not stop generation; eos_at = first index of eos_token_id in greedy_ids or null",
            "top5[i] = the 5 largest raw logits (pre-softmax) of the distribution that chose greedy_ids[i]; [id, logit] rounded to 5 decimals",
            "chat prompts: text = transformers apply_chat_template(messages, tokenize=False, add_generation_prompt=True) with the GGUF's chat template; special tokens parsed as specials by both tokenizers",
            "llama.cpp: CPU backend, plain CPU buffers (use_extra_bufts=False: no AMX, no repack); Q4_1 / Q8_0 weights multiplied against activations quantized to Q8_1 / Q8_0; KV cache f32, flash attention off",
            "transformers: GGUF tensors dequantized to float32, CPU, eager float32 math",
            "last_logits/<name>.<impl>.f32: 49152 little-endian f32, logits at the last prompt position (those that choose greedy_ids[0])",
            "last_logits_rel_l2_llama_vs_hf = ||llama - hf||_2 / ||hf||_2 over those vectors; last_logits_rel_l2_centered: the same after subtracting each vector's mean (a constant logit shift does not change softmax); last_probs_*: softmax of those vectors",
            "first_diff_top2_margin: top1 - top2 logit of each implementation at greedy_first_diff (the positions are only comparable while the greedy prefixes agree)",
            "tokenizers: transformers' GGUF converter builds a plain GPT-2 ByteLevel(use_regex=True) pre-tokenizer for tokenizer.ggml.pre = smollm, while llama.cpp splits every \\p{N} character individually first; ASCII digits tokenize the same (the vocab has single-digit tokens only) but other \\p{N} characters (e.g. ½ ¹) can differ, see tokenizer_corpus.json 'disagree'",
        ],
        "llama_cpp_settings": L.get("settings"),
        "chat_template_source": render_src,
        "chat_render_llama_cpp_python_matches": chat_check or None,
        "transformers_info": {k: H[k] for k in ("model_dtype", "config", "tokenizer_class",
                                                "add_special_tokens_true_example", "pre_tokenizer") if k in H} or None,
        "summary": {
            "prompts": len(out_prompts),
            "greedy_agree": sum(e["greedy_agree"] for e in out_prompts),
            "ids_agree": sum(e["ids_agree"] for e in out_prompts),
        },
        "prompts": out_prompts,
    }
    if prev is not None:
        # Keep what the previous run recorded for a part that was not recomputed.
        for k in ("transformers_info",):
            if ref[k] is None and prev.get(k) is not None:
                ref[k] = prev[k]
        if ref["chat_render_llama_cpp_python_matches"] is None and prev.get("chat_render_llama_cpp_python_matches"):
            ref["chat_render_llama_cpp_python_matches"] = prev["chat_render_llama_cpp_python_matches"]

    lines = []
    for i, s in enumerate(corpus):
        a, b = L["corpus"][i], H["corpus"][i]
        d = {"text": s, "llama_cpp": a, "transformers": b}
        if a != b:
            d["disagree"] = True
        lines.append(d)
    n_agree = sum(1 for d in lines if "disagree" not in d)
    corpus_doc = {
        "about": "ids without BOS: llama.cpp tokenize(text, add_bos=False, special=True); transformers tokenizer.encode(text, add_special_tokens=False). 'disagree': true where the two differ.",
        "model": MODEL_FILE,
        "n_lines": len(lines), "n_agree": n_agree,
        "lines": lines,
    }
    ref["summary"]["tokenizer_corpus_agree"] = f"{n_agree}/{len(lines)}"

    FIX.mkdir(parents=True, exist_ok=True)
    (FIX / "reference.json").write_text(json.dumps(ref, ensure_ascii=False, indent=1) + "\n")
    (FIX / "tokenizer_corpus.json").write_text(json.dumps(corpus_doc, ensure_ascii=False, indent=1) + "\n")

    print("timings (s):", {k: round(v, 1) for k, v in timings.items()})
    print("summary:", json.dumps(ref["summary"]))
    for e in out_prompts:
        print(f"  {e['name']:24s} ids_agree={e['ids_agree']} greedy_agree={e['greedy_agree']} "
              f"first_diff={e['greedy_first_diff']} rel_l2={e['last_logits_rel_l2_llama_vs_hf']:.3e} "
              f"eos_at llama={e['llama_cpp']['eos_at']} hf={e['transformers']['eos_at']}")


if __name__ == "__main__":
    main()

