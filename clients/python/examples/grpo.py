"""GRPO against a Tandem server: groups of samples per prompt, group-normalised advantages,
PPO-clipped loss with the sampler's logprobs, policy versions checked.

The toy task runs on the built-in tiny random model on a CPU in well under a
minute: the reward of a completion is the share of its ``--max-tokens``
positions filled with tokens from a target band of the vocabulary (ids
``--target-low`` to ``--target-high``). A random policy starts near the band's
share of the vocabulary; the trained one fills most positions from it.

    python -m service &                                   # the server, tiny model loaded
    python clients/python/examples/grpo.py --fresh --steps 30 --plot grpo.png --save grpo-run
    python clients/python/examples/grpo.py --steps 20 --resume grpo-run   # continue, even after a server restart

Against one trainer and sampler replicas (docs/scale-out.md), sampling goes to
the samplers and every Generate asks for the version the last TrainStep made
(``min_adapter_version``), so each sample is on-policy whichever replica serves it:

    python clients/python/examples/grpo.py --address trainer:50051 --samplers sampler-1:50051,sampler-2:50051

Each step: sample ``--group-size`` completions for each prompt from the
current adapter (with logprobs), check that every sample reports the adapter
version the step is based on, score them, normalise rewards within each group,
and send ``--ppo-epochs`` TrainSteps with the PPO-clipped loss on that batch.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from dataclasses import dataclass

from tandem import Client, Completion
from tandem.routing import parse_samplers

EOS_ID = 2


@dataclass(frozen=True)
class Task:
    """The toy task: prompts (token ids) and the target band of token ids."""

    prompts: list[list[int]]
    target: range
    max_tokens: int

    def reward(self, completion: Completion) -> float:
        """Share of the max_tokens positions holding a target token (stopping early scores the rest 0)."""
        return sum(token in self.target for token in completion.token_ids) / self.max_tokens


def make_task(args: argparse.Namespace) -> Task:
    """Fixed random prompts of 4-8 tokens after BOS (seeded, so runs are comparable)."""
    rng = random.Random(args.seed)
    prompts = [[1] + [rng.randrange(3, 1000) for _ in range(rng.randint(4, 8))] for _ in range(args.prompts)]
    return Task(prompts=prompts, target=range(args.target_low, args.target_high + 1), max_tokens=args.max_tokens)


def group_advantages(rewards: list[float]) -> list[float]:
    """GRPO: each reward minus its group's mean, over the group's standard deviation (0 when all are equal)."""
    mean = statistics.fmean(rewards)
    spread = statistics.pstdev(rewards)
    return [0.0 if spread < 1e-6 else (r - mean) / spread for r in rewards]


def training_sequence(prompt: list[int], completion: Completion, advantage: float) -> dict:
    """One TrainSequence: loss on the completion tokens only, the sampler's logprobs for the PPO ratio."""
    padding = [0.0] * len(prompt)
    return {
        "token_ids": prompt + completion.token_ids,
        "loss_weights": padding + [1.0] * len(completion.token_ids),
        "advantage": advantage,
        "sampler_logprobs": padding + completion.logprobs,
    }


def grpo_step(client: Client, task: Task, version: int, args: argparse.Namespace) -> tuple[float, object]:
    """Sample, score, and train once; returns the batch's mean reward and the TrainStep reply."""
    sampling = {"n": args.group_size, "temperature": 1.0, "max_tokens": task.max_tokens, "logprobs": 0}
    completions = client.generate(task.prompts, sampling=sampling, min_adapter_version=version)
    stale = [c for c in completions if c.adapter_version != version]
    if stale:  # every sample must come from the policy this step updates
        raise RuntimeError(f"{len(stale)} samples came from adapter version {stale[0].adapter_version}, expected {version}")
    rewards = [task.reward(c) for c in completions]
    sequences = []
    for index, prompt in enumerate(task.prompts):
        group = completions[index * args.group_size : (index + 1) * args.group_size]
        advantages = group_advantages([task.reward(c) for c in group])
        sequences += [training_sequence(prompt, c, a) for c, a in zip(group, advantages) if a != 0.0 and c.token_ids]
    if not sequences:  # every group was uniform: nothing to learn from this batch
        return statistics.fmean(rewards), None
    for _ in range(args.ppo_epochs):  # later epochs are off-policy by a step or more: the ratio and its clip matter
        reply = client.train_step(
            sequences,
            loss={"function": "LOSS_FUNCTION_PPO_CLIP", "clip_low": args.clip},
            optimizer={"learning_rate": args.lr, "max_grad_norm": 1.0},
        )
    return statistics.fmean(rewards), reply


def plot(curve: list[float], path: str) -> None:
    """Save the reward curve as a PNG when matplotlib is installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed: no plot written to {path} (pip install matplotlib)")
        return
    figure, axes = plt.subplots(figsize=(6, 3.5))
    axes.plot(range(1, len(curve) + 1), curve, marker=".")
    axes.set(xlabel="step", ylabel="mean reward", title="GRPO on the tiny model", ylim=(0, 1))
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    print(f"reward curve written to {path}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", default="127.0.0.1:50051", help="server host:port; with --samplers, the trainer's (default %(default)s)")
    parser.add_argument("--samplers", type=parse_samplers, help="sampler replicas for Generate: host:port,host:port or dns:///name:port (default: --address)")
    parser.add_argument("--steps", type=int, default=30, help="GRPO steps (default %(default)s)")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step (default %(default)s)")
    parser.add_argument("--group-size", type=int, default=8, help="samples per prompt (default %(default)s)")
    parser.add_argument("--max-tokens", type=int, default=8, help="tokens per completion (default %(default)s)")
    parser.add_argument("--target-low", type=int, default=100, help="first token id of the target band (default %(default)s)")
    parser.add_argument("--target-high", type=int, default=227, help="last token id of the target band (default %(default)s)")
    parser.add_argument("--lr", type=float, default=2e-2, help="AdamW learning rate (default %(default)s)")
    parser.add_argument("--ppo-epochs", type=int, default=2, help="optimizer steps on each batch of samples (default %(default)s)")
    parser.add_argument("--clip", type=float, default=0.2, help="PPO clip range (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prompts (default %(default)s)")
    parser.add_argument("--fresh", action="store_true", help="LoadModel first: start from a fresh adapter and optimizer")
    parser.add_argument("--resume", metavar="NAME", help="LoadAdapter this checkpoint first (adapter, optimizer, step)")
    parser.add_argument("--save", metavar="NAME", help="SaveAdapter under this name at the end (overwriting)")
    parser.add_argument("--plot", metavar="PNG", help="save the reward curve as a PNG (needs matplotlib)")
    parser.add_argument("--json", metavar="PATH", help="write the reward curve and timings as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run GRPO for --steps steps and report the reward curve."""
    args = parse_args(argv)
    task = make_task(args)
    with Client(args.address, samplers=args.samplers) as client:
        model = None if args.fresh else client.get_model()
        if model is None:
            model = client.load_model()
        version = model.adapter_version
        if args.resume:
            restored = client.load_adapter(args.resume)
            version = restored.adapter_version
            print(f"resumed {args.resume!r} at step {restored.step}, adapter version {version}")
        curve: list[float] = []
        started = time.perf_counter()
        for step in range(1, args.steps + 1):
            reward, reply = grpo_step(client, task, version, args)
            curve.append(reward)
            if reply is not None:
                version = reply.adapter_version
                detail = f"loss {reply.loss:+.4f}  clipped {reply.clip_fraction:.2f}  version {version}"
            else:
                detail = "all groups uniform: no update"
            print(f"step {step:3d}  mean reward {reward:.3f}  {detail}", flush=True)
        seconds = time.perf_counter() - started
        if args.save:
            saved = client.save_adapter(args.save, overwrite=True)
            print(f"saved {saved.name!r}: step {saved.step}, adapter version {saved.adapter_version}")
    window = max(1, min(5, len(curve) // 4))
    start, end = statistics.fmean(curve[:window]), statistics.fmean(curve[-window:])
    print(f"reward {start:.3f} -> {end:.3f} (mean of first/last {window} steps) over {len(curve)} steps in {seconds:.1f} s")
    if args.plot:
        plot(curve, args.plot)
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"rewards": curve, "start": start, "end": end, "steps": len(curve), "seconds": seconds}, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
