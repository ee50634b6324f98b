"""PyTorch CPU baseline for bench/train-throughput.ts.

Trains Hugging Face's T5ForConditionalGeneration from scratch on random token ids with the shape, batch, sequence
lengths, method, optimiser and thread count it is given, warms up until step times settle (the last `--window` steps
within `--tolerance` of each other, at most `--max-warmup` steps), times `--steps` steps, then writes a checkpoint
(torch.save of the model's and the optimiser's state dicts to a temp file, removed after) so its peak RSS includes
one, as the student's does. Prints one JSON object (its last stdout line) with the timed step times and the peak
RSS before and after the checkpoint. It installs nothing: without torch and transformers it prints a JSON object
with `skipped` and the reason, and exits 0, so the bench can report PyTorch as skipped.

Methods: `standard` (source → label) and `dss`, distilling step-by-step as Stepwise's trainer (lib/student/loss.ts)
and the reference's TaskPrefixTrainer run it: two forward passes per step, one over the `predict:` batch (source →
label) and one over the `explain:` batch of the same examples (source → rationale), one backward through
alpha·label_loss + (1 − alpha)·rationale_loss, each the mean token cross-entropy of its pass.

    python bench/pytorch_t5_throughput.py --config '{"d_model": 512, ...}' --batch 8 --source 64 --target 32
"""

import argparse
import json
import math
import os
import resource
import sys
import tempfile
import time

# Setup time is counted from here: the standard library's imports are milliseconds, torch's and the model's are not.
STARTED = time.perf_counter()


def peak_rss_mib() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class StepClock:
    """Splits step times into warm-up and timed steps, as bench/train-throughput.ts's StepClock does."""

    def __init__(self, window: int, tolerance: float, max_warmup: int, steps: int):
        self.window, self.tolerance, self.max_warmup, self.steps = window, tolerance, max_warmup, steps
        self.warmup_ms: list = []
        self.step_ms: list = []
        self.settled = False
        self.warming = True

    def lap(self, ms: float) -> None:
        if not self.warming:
            self.step_ms.append(ms)
            return
        self.warmup_ms.append(ms)
        recent = self.warmup_ms[-self.window :]
        if len(recent) == self.window and max(recent) <= min(recent) * (1 + self.tolerance):
            self.settled = True
            self.warming = False
        elif len(self.warmup_ms) >= self.max_warmup:
            self.warming = False

    @property
    def done(self) -> bool:
        return len(self.step_ms) >= self.steps


def time_matmuls(products: list, threads: int, warmup: int = 2, passes: int = 7) -> None:
    """Times a step's weight-matrix products alone, as HF's T5 runs them: each forward product as nn.Linear computes
    it (X · Wᵀ with W stored [out, in]), and the two of its backward pass, dX = dY · W and dW = dYᵀ · X. Prints the
    median pass in ms (the timing half of bench/train-throughput.ts's `matmulMs`)."""
    try:
        import torch
    except ImportError as err:
        print(json.dumps({"skipped": f"{err} (pip install -r bench/requirements.txt)"}))
        return
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    sets = [(torch.randn(r, i), torch.randn(c, i), torch.randn(r, c)) for r, i, c in products]
    linear = torch.nn.functional.linear

    def one_pass() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            for x, w, dy in sets:
                linear(x, w)
                dy @ w
                dy.t() @ x
        return 1000 * (time.perf_counter() - start)

    for _ in range(warmup):
        one_pass()
    times = sorted(one_pass() for _ in range(passes))
    print(json.dumps({"matmulMs": round(times[len(times) // 2], 1), "passesMs": [round(t, 1) for t in times]}))
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True, help="T5Config fields as JSON (HF names)")
    parser.add_argument("--method", choices=("standard", "dss"), default="standard")
    parser.add_argument("--alpha", type=float, default=0.5, help="weight of the label loss (dss)")
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--source", type=int, required=True, help="source tokens per example, eos included")
    parser.add_argument("--target", type=int, required=True, help="label tokens per example, eos included")
    parser.add_argument("--rationale", type=int, default=0, help="rationale tokens per example, eos included (dss)")
    parser.add_argument("--window", type=int, default=3, help="warm-up ends when this many step times…")
    parser.add_argument("--tolerance", type=float, default=0.05, help="…lie within this fraction of each other")
    parser.add_argument("--max-warmup", type=int, default=15, help="…or after this many warm-up steps")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--matmuls",
        help="time only these weight-matrix products (a JSON list of [rows, inner, cols]) and train nothing",
    )
    args = parser.parse_args()
    if args.matmuls:
        time_matmuls(json.loads(args.matmuls), args.threads)
        return
    if args.method == "dss" and args.rationale < 1:
        parser.error("--rationale is required (≥ 1) with --method dss")

    try:
        import torch
        import transformers
        from transformers import T5Config, T5ForConditionalGeneration
    except ImportError as err:
        print(json.dumps({"skipped": f"{err} (pip install -r bench/requirements.txt)"}))
        return

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    fields = json.loads(args.config)
    # JSON has one number type; transformers 5 validates float fields strictly and rejects an int such as 1.
    for name in ("dropout_rate", "layer_norm_epsilon", "initializer_factor"):
        if name in fields:
            fields[name] = float(fields[name])
    config = T5Config(**fields)
    model = T5ForConditionalGeneration(config)
    if fields.get("tie_word_embeddings") is False:
        # An untied lm_head (t5-v1_1). transformers 5 ties lm_head to the embeddings whatever the config says (it reads
        # tie_word_embeddings=False only as "do not rescale the decoder output"), and transformers 4 initialises an
        # untied lm_head with std 1, which gives logits of scale sqrt(d_model) and a starting loss near 100; so the
        # head is replaced by its own parameter at T5's scale d_model^-0.5, which Stepwise's initialiser uses too.
        weight = torch.empty(config.vocab_size, config.d_model).normal_(std=config.d_model**-0.5)
        model.lm_head.weight = torch.nn.Parameter(weight)
    elif fields.get("scale_decoder_outputs") is False:
        # A tied head without the rescale (the reproduction's student): Stepwise starts the shared matrix at
        # d_model^-0.5 so the initial logits are unit-scale; the same here, so neither side trains from a huge loss.
        with torch.no_grad():
            model.shared.weight.normal_(std=config.d_model**-0.5)
    model.train()
    # The same defaults as Stepwise's trainer (HF Seq2SeqTrainer's): AdamW, betas 0.9/0.999, eps 1e-8, no weight decay.
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)

    generator = torch.Generator().manual_seed(args.seed)
    vocab = config.vocab_size

    def ids(length: int):
        # Ids from 3 up (0 pad, 1 eos, 2 unk) and an eos last: no padding, so every position counts as a token.
        rows = torch.randint(3, vocab, (args.batch, length), generator=generator)
        rows[:, -1] = config.eos_token_id
        return rows

    def step_loss():
        # Mean cross-entropy over the label tokens (HF's loss when labels are given), per pass.
        label_loss = model(input_ids=ids(args.source), labels=ids(args.target)).loss
        if args.method == "standard":
            return label_loss
        rationale_loss = model(input_ids=ids(args.source), labels=ids(args.rationale)).loss
        return args.alpha * label_loss + (1 - args.alpha) * rationale_loss

    clock = StepClock(args.window, args.tolerance, args.max_warmup, args.steps)
    losses = []
    last = time.perf_counter()
    setup_ms = 1000 * (last - STARTED)
    # Each step is timed end to end, from the previous step's end: the batch's random ids are part of it (microseconds).
    while not clock.done:
        optimizer.zero_grad(set_to_none=True)
        loss = step_loss()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        optimizer.step()
        value = loss.item()
        now = time.perf_counter()
        clock.lap(1000 * (now - last))
        last = now
        if not math.isfinite(value):
            raise SystemExit(f"loss is {value} at step {len(losses) + 1}")
        losses.append(value)

    training_peak = peak_rss_mib()
    fd, path = tempfile.mkstemp(prefix="stepwise-bench-", suffix=".pt")
    os.close(fd)
    try:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, path)
        checkpoint_mib = os.path.getsize(path) / 2**20
        peak = peak_rss_mib()
    finally:
        os.remove(path)

    print(
        json.dumps(
            {
                "stepMs": [round(ms, 1) for ms in clock.step_ms],
                "warmupMs": [round(ms, 1) for ms in clock.warmup_ms],
                "settled": clock.settled,
                "peakRssMiB": peak,
                "trainingPeakRssMiB": training_peak,
                "checkpointMiB": checkpoint_mib,
                "setupMs": round(setup_ms),
                "losses": [round(v, 4) for v in losses],
                "params": sum(p.numel() for p in model.parameters()),
                "detail": {
                    "torch": torch.__version__,
                    "transformers": transformers.__version__,
                    "threads": torch.get_num_threads(),
                    "cpuCapability": torch.backends.cpu.get_cpu_capability(),
                    "mkldnn": torch.backends.mkldnn.is_available(),
                },
            }
        )
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
