"""GPU checks of the engine: the ρ = 1 identity in bfloat16, samkv timed against full,
cacheblend and epic at long contexts on the embedded model and on a randomly initialised
model of the Llama-3.1-8B architecture (timing only: its weights are random), the
context-length sweep of every method (`samkv-rag bench-sweep`, up to 32k tokens on the 0.5B
model) and the decoding comparison of float and int8 weights (`samkv-rag bench-decode`).

    python scripts/gpu_check.py            # on a CUDA machine (without one it says so and stops)
    python scripts/gpu_check.py --smoke    # tiny sizes on the CPU, to check the script itself
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from app.bench.commands import run_command
from samkv import Engine
from samkv.runtime import LoadedModel, load_tokenizer

LLAMA_31_8B = {
    "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 131072, "rope_theta": 500000.0,
    "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 8192},
}
METHODS = [("full", {}), ("cacheblend", {"recompute_ratio": 0.15}), ("epic", {"k": 16}), ("samkv", {"keep_ratio": 0.15})]


def random_llama(device: str, dtype: torch.dtype, smoke: bool) -> Engine:
    tokenizer = load_tokenizer()
    sizes = dict(LLAMA_31_8B)
    if smoke:
        sizes.update(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2)
    sizes["vocab_size"] = max(sizes["vocab_size"], len(tokenizer))
    config = LlamaConfig(**sizes, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval()
    loaded = LoadedModel(model, tokenizer, path=None, weights_fingerprint="random-llama-3.1-8b-architecture",
                         device=torch.device(device), dtype=dtype)
    return Engine(loaded, self_check=True)


def documents_of(engine: Engine, total_tokens: int, docs: int) -> list:
    sentence = "The survey recorded the river depth, the bridge height and the market dates of the town. "
    per_doc = total_tokens // docs
    text = sentence * (per_doc // engine.count_tokens(sentence) + 1)
    ids = engine.tokenizer(text, add_special_tokens=False)["input_ids"][: per_doc - 4]
    return engine.encode_documents([f"Doc {i}. " + engine.tokenizer.decode(ids) for i in range(docs)])


def time_methods(engine: Engine, label: str, total_tokens: int, docs: int, repeats: int) -> None:
    documents = documents_of(engine, total_tokens, docs)
    question = "What does the survey record about the bridge?"
    results = {}
    for method, params in METHODS:
        engine.generate(question, documents, method, max_new_tokens=1, **params)  # warm-up
        ttft, stats = [], None
        for _ in range(repeats):
            if engine.device.type == "cuda":
                torch.cuda.synchronize()
            stats = engine.generate(question, documents, method, max_new_tokens=1, **params).stats
            ttft.append(stats["ttft_ms"])
        results[method] = (statistics.median(ttft), stats)
    full_ms, full_stats = results["full"]
    print(f"\n{label}: {sum(d.length for d in documents)} context tokens in {docs} documents")
    print("| method | TTFT ms | TTFT / full | KV decode / full | KV peak / full |")
    print("|---|---|---|---|---|")
    for method, (ms, stats) in results.items():
        print(f"| {method} | {ms:.1f} | {ms / full_ms:.3f} | {stats['kv_bytes_decode'] / full_stats['kv_bytes_decode']:.3f} "
              f"| {stats['kv_bytes_peak'] / full_stats['kv_bytes_peak']:.3f} |")


def benchmarks(out: Path, smoke: bool) -> int:
    """The context-length sweep and the decoding comparison, through the CLI's own commands;
    the exit code of the first that fails."""
    if smoke:
        sweep = ["--model", "smollm2-135m-instruct", "--context-tokens", "300,600", "--questions", "1",
                 "--docs", "2", "--doc-tokens", "100", "--methods", "full,naive,samkv", "--max-new-tokens", "4"]
        decode = ["--model", "smollm2-135m-instruct", "--rounds", "1", "--new-tokens", "8", "--questions", "1",
                  "--docs", "2", "--doc-tokens", "60"]
    else:
        # The 0.5B model holds 32768 positions; bfloat16 is the CUDA default dtype.
        sweep = ["--model", "qwen2.5-coder-0.5b-instruct", "--context-tokens", "1000,2000,4000,8000,16000,32000",
                 "--questions", "4", "--split", "dev", "--cache-tier", "disk", "--cold"]
        decode = ["--model", "qwen2.5-coder-0.5b-instruct", "--rounds", "5", "--new-tokens", "64",
                  "--questions", "20", "--split", "dev"]
    for command, flags in (("bench-sweep", sweep + ["--out", str(out / "sweep")]),
                           ("bench-decode", decode + ["--out", str(out / "decode")])):
        print(f"\nsamkv-rag {command} {' '.join(flags)}", flush=True)
        code = run_command(command, flags)
        if code:
            return code
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, CPU allowed")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("/tmp/gpu-check"),
                        help="where the sweep and the decoding comparison write their reports")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.smoke:
        print("no CUDA device: the GPU checks are skipped (--smoke checks the script on the CPU)")
        return 0
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    started = time.perf_counter()
    embedded = Engine.load(device=device, dtype=dtype)
    docs = embedded.encode_documents(["The vault code at the Oriel bank is 4471."] * 2 + ["Lake Sorrel freezes in January."])
    full = embedded.question_logits("What is the vault code?", docs, method="full")
    same = embedded.question_logits("What is the vault code?", docs, method="samkv", keep_ratio=1.0)
    print(f"identity at rho=1 ({dtype}, {device}): max |logit diff| / max |logit| = "
          f"{float((full - same).abs().max() / full.abs().max()):.2e}; self-check refusal: {embedded.reuse_refusal}")
    sizes = [(512, 4)] if args.smoke else [(8000, 16)]
    for tokens, count in sizes:
        time_methods(embedded, f"embedded {embedded.loaded.path.name}", tokens, count, args.repeats)
    big = random_llama(device, dtype, args.smoke)
    for tokens, count in ([(512, 4)] if args.smoke else [(8192, 16), (32768, 32)]):
        time_methods(big, "random Llama-3.1-8B architecture (timing only)", tokens, count, args.repeats)
    del big  # the benchmarks load their own models
    code = benchmarks(args.out, args.smoke)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
