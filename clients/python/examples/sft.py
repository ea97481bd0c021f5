"""Supervised fine-tuning from a JSONL file against a Tandem server.

Each line of the file is ``{"prompt": "...", "completion": "..."}``; the loss
is cross-entropy on the completion tokens (and the end-of-sequence token the
server appends), never on the prompt. The client owns the schedule: a linear
warm-up then a cosine decay of the learning rate, sent with every step.

    python -m service &
    python clients/python/examples/sft.py clients/python/examples/data/sft_sample.jsonl --epochs 6 --save sft-run

Against one trainer and sampler replicas, add ``--address trainer:50051
--samplers sampler-1:50051,sampler-2:50051``: training goes to the trainer, and
the closing sample to a sampler, asking for the version the last step made.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path

from tandem import Client
from tandem.routing import parse_samplers


def read_examples(path: Path) -> list[dict[str, str]]:
    """The file's examples; ValueError names the first bad line."""
    examples = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        record = json.loads(line)
        if not isinstance(record.get("completion"), str) or not record["completion"]:
            raise ValueError(f"{path}:{number}: needs a non-empty \"completion\" string")
        examples.append({"prompt": str(record.get("prompt", "")), "completion": record["completion"]})
    if not examples:
        raise ValueError(f"{path} holds no examples")
    return examples


def learning_rate(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up to ``peak`` over ``warmup`` steps, then cosine decay to a tenth of it."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def batches(examples: list[dict[str, str]], size: int, rng: random.Random) -> list[list[dict[str, str]]]:
    """One epoch: the examples shuffled and cut into batches."""
    order = examples[:]
    rng.shuffle(order)
    return [order[i : i + size] for i in range(0, len(order), size)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="JSONL file of {\"prompt\", \"completion\"} records")
    parser.add_argument("--address", default="127.0.0.1:50051", help="server host:port; with --samplers, the trainer's (default %(default)s)")
    parser.add_argument("--samplers", type=parse_samplers, help="sampler replicas for Generate: host:port,host:port or dns:///name:port (default: --address)")
    parser.add_argument("--epochs", type=int, default=6, help="passes over the data (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=4, help="examples per TrainStep (default %(default)s)")
    parser.add_argument("--lr", type=float, default=1e-2, help="peak AdamW learning rate (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up steps (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="shuffling seed (default %(default)s)")
    parser.add_argument("--fresh", action="store_true", help="LoadModel first: start from a fresh adapter and optimizer")
    parser.add_argument("--resume", metavar="NAME", help="LoadAdapter this checkpoint first")
    parser.add_argument("--save", metavar="NAME", help="SaveAdapter under this name at the end (overwriting)")
    parser.add_argument("--json", metavar="PATH", help="write per-epoch mean losses and timings as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Train for --epochs epochs, print the loss per step and per epoch, sample the first prompt."""
    args = parse_args(argv)
    examples = read_examples(args.data)
    rng = random.Random(args.seed)
    total = args.epochs * math.ceil(len(examples) / args.batch_size)
    epoch_losses: list[float] = []
    with Client(args.address, samplers=args.samplers) as client:
        if args.fresh or client.get_model() is None:
            client.load_model()
        if args.resume:
            restored = client.load_adapter(args.resume)
            print(f"resumed {args.resume!r} at step {restored.step}")
        started, step = time.perf_counter(), 0
        for epoch in range(1, args.epochs + 1):
            losses = []
            for batch in batches(examples, args.batch_size, rng):
                lr = learning_rate(step, total, args.lr, args.warmup)
                reply = client.train_step(batch, optimizer={"learning_rate": lr})
                losses.append(reply.loss)
                step += 1
                print(f"epoch {epoch} step {reply.step:4d}  lr {lr:.2e}  loss {reply.loss:.4f}  tokens {reply.tokens}", flush=True)
            epoch_losses.append(statistics.fmean(losses))
            print(f"epoch {epoch}: mean loss {epoch_losses[-1]:.4f}")
        seconds = time.perf_counter() - started
        first = examples[0]
        sample = client.generate(first["prompt"], sampling={"temperature": 0.0, "max_tokens": 16}, min_adapter_version=reply.adapter_version)[0]
        print(f"greedy answer to {first['prompt']!r}: {sample.text!r} (trained on {first['completion']!r})")
        if args.save:
            saved = client.save_adapter(args.save, overwrite=True)
            print(f"saved {saved.name!r}: step {saved.step}, {saved.size_bytes} bytes")
    print(f"mean loss {epoch_losses[0]:.4f} -> {epoch_losses[-1]:.4f} over {args.epochs} epochs ({step} steps) in {seconds:.1f} s")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"epoch_losses": epoch_losses, "steps": step, "seconds": seconds, "sample": sample.text}, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
