"""llama.cpp (through llama-cpp-python) on the same GGUF and the same CPU cores: the CPU
anchor of `ferrinfer bench-generate --cpu`. One request at a time (llama-cpp-python's `Llama`
serves one sequence): a prompt of `prompt_len` tokens (the same random ordinary tokens as ours:
ids from 256 up, seeded), then `gen_len` greedy tokens. Prints JSON: time to first token
(prefill + first token) and decode tokens/s after it.

The venv of scripts/reference (llama-cpp-python 0.3.36) runs it:
  /work/venv-ref/bin/python benches/llama_cpp_generate.py --model models/SmolLM2-135M-Instruct.Q4_1.gguf
"""
import argparse
import json
import os
import random
import time

import llama_cpp


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--gen-len", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    # The reference script's setting: no AMX/repacked weight buffers (this CPU's AMX path
    # crashed llama.cpp; see scripts/reference/README.md).
    import llama_cpp.llama_cpp as ll
    orig = ll.llama_model_default_params

    def params():
        p = orig()
        p.use_extra_bufts = False
        return p

    ll.llama_model_default_params = params
    try:
        llm = llama_cpp.Llama(model_path=a.model, n_ctx=4096, n_threads=a.threads,
                              n_threads_batch=a.threads, n_batch=512, verbose=False, seed=0,
                              logits_all=False)
    finally:
        ll.llama_model_default_params = orig
    assert llm.model_params.use_extra_bufts is False
    rng = random.Random(1)
    results = []
    for rep in range(a.repeats):
        prompt = [rng.randrange(256, 49152) for _ in range(a.prompt_len)]
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt)
        tok = int(llm._scores[-1].argmax())
        ttft = time.perf_counter() - t0
        t1 = time.perf_counter()
        for _ in range(a.gen_len - 1):
            llm.eval([tok])
            tok = int(llm._scores[-1].argmax())
        dec = time.perf_counter() - t1
        results.append((ttft, (a.gen_len - 1) / dec))
    ttft = sorted(r[0] for r in results)[len(results) // 2]
    tps = sorted(r[1] for r in results)[len(results) // 2]
    print(json.dumps({
        "impl": f"llama.cpp via llama-cpp-python {llama_cpp.__version__}",
        "threads": a.threads, "prompt_len": a.prompt_len, "gen_len": a.gen_len,
        "ttft_ms": round(ttft * 1e3, 1), "decode_tokens_per_s": round(tps, 1),
        "repeats": a.repeats,
    }))


if __name__ == "__main__":
    main()
