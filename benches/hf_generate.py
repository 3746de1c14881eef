"""Hugging Face transformers' `generate` on the GPU, the speed anchor of `ferrinfer
bench-generate`: a randomly initialised Llama model of the GGUF's configuration (SmolLM2-135M:
30 layers, dim 576, 9/3 heads of 64, FFN 1536, vocab 49152, tied embeddings; weights do not
change the speed), bf16, `batch` prompts of `prompt_len` random tokens, `gen_len` greedy tokens
each (EOS disabled, so every row generates them all). Prints one JSON line per batch size.

Usage (GPU machine): python3 benches/hf_generate.py [--batches 1,16,64,256] [--prompt-len 512]
                     [--gen-len 128]
"""
import argparse
import json
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="1,16,64,256")
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--gen-len", type=int, default=128)
    ap.add_argument("--dtype", default="bfloat16")
    a = ap.parse_args()
    cfg = LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, head_dim=64, rms_norm_eps=1e-5,
        rope_theta=100000.0, max_position_embeddings=8192, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2,
    )
    torch.manual_seed(0)
    dtype = getattr(torch, a.dtype)
    model = LlamaForCausalLM(cfg).to("cuda", dtype=dtype).eval()
    gen = torch.Generator(device="cuda").manual_seed(1)
    for b in [int(x) for x in a.batches.split(",")]:
        ids = torch.randint(256, 49152, (b, a.prompt_len), device="cuda", generator=gen)
        mask = torch.ones_like(ids)
        kw = dict(max_new_tokens=a.gen_len, min_new_tokens=a.gen_len, do_sample=False,
                  eos_token_id=None, pad_token_id=0)
        with torch.inference_mode():
            model.generate(ids[:, :16], attention_mask=mask[:, :16], max_new_tokens=4,
                           do_sample=False, pad_token_id=0)  # warm-up
            torch.cuda.synchronize()
            # Time to first token: one prefill + one token.
            t0 = time.perf_counter()
            model.generate(ids, attention_mask=mask, max_new_tokens=1, do_sample=False,
                           pad_token_id=0)
            torch.cuda.synchronize()
            ttft = time.perf_counter() - t0
            t0 = time.perf_counter()
            out = model.generate(ids, attention_mask=mask, **kw)
            torch.cuda.synchronize()
            total = time.perf_counter() - t0
        n = (out.shape[1] - a.prompt_len) * b
        print(json.dumps({
            "impl": f"transformers {__import__('transformers').__version__} generate, torch {torch.__version__}, {a.dtype}",
            "device": torch.cuda.get_device_name(),
            "batch": b, "prompt_len": a.prompt_len, "gen_len": a.gen_len,
            "total_s": round(total, 4), "generated_tokens": n,
            "tokens_per_s": round(n / total, 1), "ttft_ms": round(ttft * 1e3, 2),
            "per_token_ms": round((total - ttft) / max(a.gen_len - 1, 1) * 1e3, 3),
        }), flush=True)


if __name__ == "__main__":
    main()
