"""The RL benchmark's workload: one GRPO setting and one verifiable task, shared by every tool (rl_bench.py).

The task needs no data set: each prompt asks for the digits of a seeded
random number in reverse ("Reverse the digits: 40917 ->" wants "71904"). The
reward checks the answer and gives partial credit, so even a random-weight
model gets rewards that differ within a group (GRPO learns nothing from a
group of equal rewards).
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, replace

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Workload:
    """Every setting the three tools share; each tool maps it onto its own options."""

    model: str = "tandem/tinyllama-1.1b-random"
    prompts: int = 32
    """Prompts per step."""
    group_size: int = 8
    """Samples per prompt (GRPO's group)."""
    new_tokens: int = 256
    steps: int = 20
    """Timed steps, after ``warmup`` untimed ones."""
    warmup: int = 1
    micro_batch: int = 32
    """Sequences per forward/backward pass; a step accumulates prompts * group_size / micro_batch of them."""
    max_seq_length: int = 512
    lora_rank: int = 64
    lora_alpha: float = 64.0
    learning_rate: float = 1e-5
    max_grad_norm: float = 1.0
    clip: float = 0.2
    """PPO clip range (TRL's epsilon)."""
    temperature: float = 1.0
    gpu_memory_utilization: float = 0.5
    gradient_checkpointing: bool = True
    eager: bool = False
    """vLLM without torch.compile and CUDA graphs: starts in seconds, decodes slower (for --quick)."""
    fast_inference: bool = True
    """Sample with vLLM (Tandem's transformers engine when false: the CPU smoke run)."""
    seed: int = 3407

    @property
    def samples(self) -> int:
        """Samples per step."""
        return self.prompts * self.group_size

    @property
    def accumulation(self) -> int:
        """Micro-batches per optimizer step."""
        return max(1, self.samples // self.micro_batch)

    def to_json(self) -> str:
        """The workload as one JSON object (passed to each tool's process)."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Workload:
        """Inverse of :meth:`to_json`."""
        return cls(**json.loads(text))


QUICK = {"prompts": 4, "group_size": 4, "new_tokens": 32, "steps": 3, "warmup": 1, "micro_batch": 8, "max_seq_length": 128, "eager": True}
"""--quick: tiny sizes for a smoke run, eager vLLM so each engine starts in seconds."""


def quick(workload: Workload) -> Workload:
    """The smoke-run version of ``workload`` (model and engine kept)."""
    return replace(workload, **QUICK)


@dataclass(frozen=True)
class Problem:
    """One prompt and its answer."""

    prompt: str
    target: str


def problems(workload: Workload) -> list[Problem]:
    """Prompts for every step, warm-up included, in the order the steps use them (seeded: the same in every run)."""
    rng = random.Random(workload.seed)
    count = (workload.warmup + workload.steps + 1) * workload.prompts  # one spare batch: a trainer may prefetch
    numbers = [str(rng.randrange(10 ** (digits - 1), 10**digits)) for digits in (rng.randint(3, 6) for _ in range(count))]
    return [Problem(prompt=f"Reverse the digits: {n} ->", target=n[::-1]) for n in numbers]


def step_problems(workload: Workload, step: int) -> list[Problem]:
    """The prompts of step ``step`` (0-based, warm-up steps first)."""
    start = step * workload.prompts
    return problems(workload)[start : start + workload.prompts]


def reward(completion: str, target: str) -> float:
    """Score in [0, 1]: 0.5 for starting with the answer, 0.3 for digits in the right places, 0.2 for digit density.

    The digits of the completion, in order, are compared position by position
    with the target; the density term (share of digits among the completion's
    non-space characters) is what separates samples of an untrained model.
    """
    text = completion.strip()
    exact = 1.0 if text.startswith(target) else 0.0
    digits = [ch for ch in text if ch.isdigit()]
    placed = sum(a == b for a, b in zip(digits, target)) / len(target)
    visible = [ch for ch in text if not ch.isspace()]
    density = len(digits) / len(visible) if visible else 0.0
    return 0.5 * exact + 0.3 * placed + 0.2 * density
