"""PyTorch CPU baseline for bench/decode.ts.

Greedy decoding with Hugging Face's T5ForConditionalGeneration.generate (do_sample=False, num_beams=1,
use_cache=True) from random initial weights, with the shape, batch, source length and thread count it is given.
min_new_tokens = max_new_tokens, so every row generates exactly --new-tokens tokens whatever the random model
prefers. The sources are the same ids bench/decode.ts gives the student: row r, column c holds
3 + (r·7919 + c·104729) mod (vocab − 3), and the last column eos.

Without --serve it warms up, times --runs calls and prints one JSON object (its last stdout line). With --serve
(bench/decode.ts runs it so, to alternate with the student without restarting either), it warms up, prints
`READY {json}`, then for each `run` line on stdin times one call and prints `RESULT {json}`; it exits when stdin
closes. It installs nothing: without torch and transformers it prints a JSON object with `skipped` and the reason
(after `READY` when serving) and exits 0.

    python bench/pytorch_t5_decode.py --config '{"d_model": 512, ...}' --batch 8 --source 64 --new-tokens 64
"""

import argparse
import json
import platform
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True, help="T5Config fields as JSON (HF names)")
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--source", type=int, required=True, help="source tokens per row, eos included")
    parser.add_argument("--new-tokens", type=int, required=True, help="tokens generated per row (min = max)")
    parser.add_argument("--warmup", type=int, default=2, help="generate calls run before timing starts")
    parser.add_argument("--runs", type=int, default=3, help="timed calls (without --serve)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--serve", action="store_true", help="time one call per `run` line on stdin")
    parser.add_argument("--untied-head", action="store_true", help="a separate lm_head (t5-v1_1), as the student's")
    args = parser.parse_args()

    try:
        import torch
        import transformers
        from transformers import T5Config, T5ForConditionalGeneration
    except ImportError as err:
        skipped = json.dumps({"skipped": f"{err} (pip install -r bench/requirements.txt)"})
        print(f"READY {skipped}" if args.serve else skipped)
        return

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    fields = json.loads(args.config)
    # JSON has one number type; transformers 5 validates float fields strictly and rejects an int such as 1.
    for name in ("dropout_rate", "layer_norm_epsilon", "initializer_factor", "classifier_dropout"):
        if name in fields:
            fields[name] = float(fields[name])
    config = T5Config(**fields)
    model = T5ForConditionalGeneration(config)
    if args.untied_head:
        # transformers 5 ties lm_head to the embeddings whatever the config says, so a student with a separate head
        # gets one here too (as bench/pytorch_t5_throughput.py does): same parameters, same bytes read per step.
        weight = torch.empty(config.vocab_size, config.d_model).normal_(std=config.d_model**-0.5)
        model.lm_head.weight = torch.nn.Parameter(weight)
    model.eval()

    vocab = config.vocab_size
    source = torch.tensor(
        [
            [3 + (r * 7919 + c * 104729) % (vocab - 3) for c in range(args.source - 1)] + [config.eos_token_id]
            for r in range(args.batch)
        ],
        dtype=torch.long,
    )
    attention_mask = torch.ones_like(source)

    def generate() -> dict:
        started = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                input_ids=source,
                attention_mask=attention_mask,
                do_sample=False,
                num_beams=1,
                use_cache=True,
                max_new_tokens=args.new_tokens,
                min_new_tokens=args.new_tokens,
                pad_token_id=config.pad_token_id,
                eos_token_id=config.eos_token_id,
                decoder_start_token_id=config.decoder_start_token_id,
            )
        seconds = time.perf_counter() - started
        # Each row is the start token then the generated ones; min = max means no row stops early.
        generated = out.shape[0] * (out.shape[1] - 1)
        return {"ms": 1000 * seconds, "tokens": generated, "tokensPerSec": generated / seconds}

    for _ in range(args.warmup):
        generate()

    about = {
        "params": sum(p.numel() for p in model.parameters()),
        "threads": torch.get_num_threads(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
    }
    if not args.serve:
        runs = [generate() for _ in range(args.runs)]
        print(json.dumps({**about, "runs": runs}))
        return

    print(f"READY {json.dumps(about)}", flush=True)
    for line in sys.stdin:
        if line.strip() == "run":
            print(f"RESULT {json.dumps(generate())}", flush=True)


if __name__ == "__main__":
    main()
