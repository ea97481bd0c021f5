"""One tool's GRPO run on the RL benchmark's workload, in a process of its own (rl_bench.py starts it).

    python tests/bench/rl_peers.py {tandem,unsloth,trl} --workload JSON --model-dir DIR --cache-dir DIR
        --work DIR --progress FILE --deadline EPOCH_SECONDS [--trl-base {nf4,bf16}]

- tandem: the server (``python -m service --model none``, through
  rl_server.py) and the Python client doing GRPO over gRPC on loopback, with
  the sampling and advantage logic of clients/python/examples/grpo.py;
- unsloth: ``FastLanguageModel.from_pretrained(..., load_in_4bit=True,
  fast_inference=True)`` + ``get_peft_model`` and TRL's GRPOTrainer, which
  importing unsloth patches (its GRPO recipe);
- trl: TRL's GRPOTrainer on a transformers model (NF4 through bitsandbytes,
  or bf16 with --trl-base bf16) with PEFT LoRA, ``use_vllm=True,
  vllm_mode="colocate"``.

Each step appends one JSON line to --progress (wall seconds, seconds in
sampling / training / weight sync, mean reward, samples), so whatever this
process finishes survives a crash or a kill. It stops early when the next
step would end past --deadline. Unsloth and TRL are imported only here, only
for their own tool.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.bench.rl_workload import LORA_TARGETS, Workload, problems, reward, step_problems  # noqa: E402

NEXT_STEP_MARGIN = 1.15
"""A step is started only if the last step's wall time, times this, still ends before the deadline."""


class Progress:
    """Appends the run's events to a JSON-lines file, one flushed line each."""

    def __init__(self, path: Path, deadline: float) -> None:
        self.path = path
        self.deadline = deadline
        self.last_step_seconds = 0.0

    def write(self, event: str, **fields: object) -> None:
        """One event line."""
        with self.path.open("a") as out:
            out.write(json.dumps({"event": event, "time": time.time(), **fields}) + "\n")

    def step(self, index: int, workload: Workload, seconds: float, phases: dict[str, float], rewards: list[float], tokens: int) -> None:
        """One finished step: its wall time, where it went, and its mean reward."""
        self.last_step_seconds = seconds
        sampling, sync = max(0.0, phases.get("sampling", 0.0)), phases.get("sync", 0.0)
        self.write(
            "step",
            step=index,
            warmup=index < workload.warmup,
            seconds=seconds,
            sampling=sampling,
            sync=sync,
            training=max(0.0, seconds - sampling - sync),
            reward=statistics.fmean(rewards) if rewards else None,
            samples=len(rewards) or workload.samples,
            completion_tokens=tokens,
        )

    def next_step_fits(self) -> bool:
        """Whether another step like the last one ends before the deadline."""
        return time.time() + self.last_step_seconds * NEXT_STEP_MARGIN < self.deadline


class PhaseClock:
    """Seconds spent in named phases since the last :meth:`take`."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)

    def timed(self, phase: str, function: Callable, inside: str | None = None) -> Callable:
        """``function``, timing each call into ``phase`` (and out of ``inside``, a phase that encloses these calls)."""

        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                seconds = time.perf_counter() - started
                self.totals[phase] += seconds
                if inside is not None:
                    self.totals[inside] -= seconds

        return wrapper

    def take(self) -> dict[str, float]:
        """The totals so far, then start again from zero."""
        totals, self.totals = dict(self.totals), defaultdict(float)
        return totals


# --- Tandem -------------------------------------------------------------------------------------------------------


def grpo_example():
    """clients/python/examples/grpo.py as a module: its group advantages and TrainSequence layout are reused here."""
    spec = importlib.util.spec_from_file_location("tandem_grpo_example", REPO / "clients/python/examples/grpo.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def launch_server(cache_dir: Path, work: Path, eager: bool):
    """``python -m service --model none`` (through rl_server.py) on free loopback ports; waits until it listens."""
    from tests.support.server import READY_LINE, ServerProcess

    log_path = work / "tandem-server.log"
    args = [sys.executable, str(REPO / "tests/bench/rl_server.py"), *(["--eager"] if eager else [])]
    args += ["--host", "127.0.0.1", "--port", "0", "--metrics-port", "0", "--cache-dir", str(cache_dir), "--model", "none"]
    with log_path.open("w") as log:
        process = subprocess.Popen(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        match = READY_LINE.search(log_path.read_text(errors="replace"))
        if match:
            return ServerProcess(process, f"127.0.0.1:{match['port']}", int(match["metrics"]), log_path, args)
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log_path.read_text(errors='replace')[-4000:]}")
        time.sleep(0.1)
    process.kill()
    raise TimeoutError(f"server did not bind within 180 s:\n{log_path.read_text(errors='replace')[-4000:]}")


def prompt_token_ids(model_dir: Path, texts: list[str]) -> list[list[int]]:
    """The prompts as the model's tokenizer encodes them (with BOS), as TRL and Unsloth encode them."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    return [tokenizer(text)["input_ids"] for text in texts]


def run_tandem(workload: Workload, args: argparse.Namespace, progress: Progress) -> str:
    """GRPO through the Tandem server: Generate -> rewards -> TrainSteps (micro-batches accumulated) per step."""
    from tandem import Client

    example = grpo_example()
    every = problems(workload)
    ids = dict(zip((p.prompt for p in every), prompt_token_ids(args.model_dir, [p.prompt for p in every])))
    server = launch_server(args.cache_dir, args.work, workload.eager and workload.fast_inference)
    try:
        with Client(server.address) as client:
            started = time.perf_counter()
            model = client.load_model(
                model_name=workload.model,
                fast_inference=workload.fast_inference,
                max_seq_length=workload.max_seq_length,
                gpu_memory_utilization=workload.gpu_memory_utilization,
                max_lora_rank=workload.lora_rank,
                random_state=workload.seed,
                gradient_checkpointing=workload.gradient_checkpointing,
                lora={"rank": workload.lora_rank, "alpha": workload.lora_alpha, "target_modules": list(LORA_TARGETS)},
                timeout=900,
            )
            progress.write("ready", load_seconds=time.perf_counter() - started)
            version = model.adapter_version
            sampling = {"n": workload.group_size, "temperature": workload.temperature, "max_tokens": workload.new_tokens, "logprobs": 0}
            for step in range(workload.warmup + workload.steps):
                if step > 0 and not progress.next_step_fits():
                    return "time budget"
                batch = step_problems(workload, step)
                prompts = [ids[p.prompt] for p in batch]
                step_started = time.perf_counter()
                completions = client.generate(prompts, sampling=sampling, timeout=600)
                sampled = time.perf_counter()
                stale = sum(c.adapter_version != version for c in completions)
                if stale:
                    raise RuntimeError(f"{stale} samples did not come from adapter version {version}")
                rewards = [reward(c.text, batch[c.prompt_index].target) for c in completions]
                sequences = []
                for index, prompt in enumerate(prompts):
                    group = completions[index * workload.group_size : (index + 1) * workload.group_size]
                    advantages = example.group_advantages(rewards[index * workload.group_size : (index + 1) * workload.group_size])
                    # Zero-advantage samples too: TRL and Unsloth spend the same forward/backward work on them.
                    sequences += [example.training_sequence(prompt, c, a) for c, a in zip(group, advantages) if c.token_ids]
                chunks = [sequences[i : i + workload.micro_batch] for i in range(0, len(sequences), workload.micro_batch)]
                for number, chunk in enumerate(chunks, 1):
                    reply = client.train_step(
                        chunk,
                        loss={"function": "LOSS_FUNCTION_PPO_CLIP", "clip_low": workload.clip},
                        optimizer={"learning_rate": workload.learning_rate, "max_grad_norm": workload.max_grad_norm},
                        accumulate=number < len(chunks),
                        timeout=600,
                    )
                version = reply.adapter_version
                seconds = time.perf_counter() - step_started
                phases = {"sampling": sampled - step_started, "sync": reply.seconds.sync}
                progress.step(step, workload, seconds, phases, rewards, sum(len(c.token_ids) for c in completions))
        return "steps"
    finally:
        server.stop()


# --- Unsloth and TRL (both drive TRL's GRPOTrainer) ----------------------------------------------------------------


def grpo_config(workload: Workload, output_dir: Path):
    """TRL's GRPOConfig with the workload's settings (constant LR, torch AdamW, no KL term, one update per batch)."""
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=str(output_dir),
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        seed=workload.seed,
        max_steps=workload.warmup + workload.steps,
        per_device_train_batch_size=workload.micro_batch,
        gradient_accumulation_steps=workload.accumulation,
        num_generations=workload.group_size,
        max_completion_length=workload.new_tokens,
        temperature=workload.temperature,
        shuffle_dataset=False,
        learning_rate=workload.learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=0,
        optim="adamw_torch",
        weight_decay=0.0,
        max_grad_norm=workload.max_grad_norm,
        beta=0.0,
        epsilon=workload.clip,
        num_iterations=1,
        gradient_checkpointing=workload.gradient_checkpointing,
        bf16=True,
        use_vllm=True,
        vllm_mode="colocate",
        vllm_gpu_memory_utilization=workload.gpu_memory_utilization,
        vllm_max_model_length=workload.max_seq_length,
    )


def prompt_dataset(workload: Workload):
    """The prompts in step order (TRL's sampler keeps it with shuffle_dataset=False), each with its answer."""
    from datasets import Dataset

    return Dataset.from_list([{"prompt": p.prompt, "target": p.target} for p in problems(workload)])


def reward_function(recorded: list[float], tokens: list[int]) -> Callable:
    """The task's reward as a TRL reward function; it also records every reward and completion length."""

    def reverse_digits_reward(prompts, completions, target, **kwargs) -> list[float]:
        rewards = [reward(text, answer) for text, answer in zip(completions, target)]
        recorded.extend(rewards)
        tokens.extend(len(ids) for ids in kwargs.get("completion_ids") or [])
        return rewards

    return reverse_digits_reward


def step_callback(workload: Workload, progress: Progress, clock: PhaseClock, rewards: list[float], tokens: list[int], loading_started: float):
    """A TrainerCallback that writes one progress line per optimizer step and stops at the deadline."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.last = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            progress.write("ready", load_seconds=time.perf_counter() - loading_started)
            clock.take()
            self.last = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            progress.step(state.global_step - 1, workload, now - self.last, clock.take(), rewards[:], sum(tokens))
            rewards.clear()
            tokens.clear()
            self.last = now
            if not progress.next_step_fits():
                progress.write("stopping", reason="time budget")
                control.should_training_stop = True

    return StepTimer()


def train_with_trl_trainer(
    workload: Workload, args: argparse.Namespace, progress: Progress, clock: PhaseClock, model, tokenizer, loading_started: float, **trainer_kwargs
) -> str:
    """GRPOTrainer on ``model`` with the workload's settings, its sampling and weight sync timed; returns why it stopped."""
    from trl import GRPOTrainer

    rewards: list[float] = []
    tokens: list[int] = []
    trainer = GRPOTrainer(
        model=model,
        processing_class=tokenizer,
        reward_funcs=[reward_function(rewards, tokens)],
        args=grpo_config(workload, args.work / "trainer"),
        train_dataset=prompt_dataset(workload),
        callbacks=[step_callback(workload, progress, clock, rewards, tokens, loading_started)],
        **trainer_kwargs,
    )
    generation = getattr(trainer, "vllm_generation", None)  # TRL >= 0.28 keeps its vLLM calls there
    if generation is None:
        progress.write("note", note="no GRPOTrainer.vllm_generation: sampling and sync are not split out of the step time")
    else:
        generation.generate = clock.timed("sampling", generation.generate)
        generation.sync_weights = clock.timed("sync", generation.sync_weights)
        time_lora_loads(clock)
    trainer.train()
    return "steps" if trainer.state.global_step >= workload.warmup + workload.steps else "time budget"


def time_lora_loads(clock: PhaseClock) -> None:
    """Count vLLM loading a LoRA adapter (Unsloth's sync, inside generation; TRL loads none) as weight sync, not sampling."""
    from vllm.lora.worker_manager import WorkerLoRAManager

    WorkerLoRAManager._load_adapter = clock.timed("sync", WorkerLoRAManager._load_adapter, inside="sampling")


def run_unsloth(workload: Workload, args: argparse.Namespace, progress: Progress) -> str:
    """Unsloth's GRPO recipe: a 4-bit model with its vLLM engine attached, LoRA, TRL's GRPOTrainer as Unsloth patches it."""
    os.chdir(args.work)  # Unsloth writes its compiled trainer (unsloth_compiled_cache/) into the working directory
    loading_started = time.perf_counter()
    from unsloth import FastLanguageModel  # before trl: importing unsloth patches TRL's trainers

    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=str(args.model_dir),
        use_exact_model_name=True,  # a local directory: no mapping to Unsloth's hub names
        max_seq_length=workload.max_seq_length,
        load_in_4bit=True,
        fast_inference=True,
        max_lora_rank=workload.lora_rank,
        gpu_memory_utilization=workload.gpu_memory_utilization,
        random_state=workload.seed,
        enforce_eager=workload.eager,
    )
    model = FastLanguageModel.get_peft_model(
        model,
        r=workload.lora_rank,
        lora_alpha=workload.lora_alpha,
        lora_dropout=0.0,
        target_modules=list(LORA_TARGETS),
        use_gradient_checkpointing="unsloth" if workload.gradient_checkpointing else False,
        random_state=workload.seed,
    )
    clock = PhaseClock()
    if hasattr(model, "load_lora"):  # Unsloth's trainer binds it while being built: wrap it first
        model.load_lora = clock.timed("sync", model.load_lora, inside="sampling")
    return train_with_trl_trainer(workload, args, progress, clock, model, tokenizer, loading_started)


def run_trl(workload: Workload, args: argparse.Namespace, progress: Progress) -> str:
    """TRL's GRPOTrainer with PEFT LoRA and a colocated vLLM engine of its own."""
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    loading_started = time.perf_counter()
    if workload.eager:  # TRL builds LLM(...) itself and has no option for it
        import trl.generation.vllm_generation as vllm_generation

        vllm_generation.LLM = functools.partial(vllm_generation.LLM, enforce_eager=True)
    quantization = None
    if args.trl_base == "nf4":
        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(str(args.model_dir), dtype=torch.bfloat16, quantization_config=quantization, device_map={"": 0})
    tokenizer = AutoTokenizer.from_pretrained(str(args.model_dir))
    lora = LoraConfig(r=workload.lora_rank, lora_alpha=workload.lora_alpha, lora_dropout=0.0, target_modules=list(LORA_TARGETS), task_type="CAUSAL_LM")
    return train_with_trl_trainer(workload, args, progress, PhaseClock(), model, tokenizer, loading_started, peft_config=lora)


TOOLS: dict[str, Callable[[Workload, argparse.Namespace, Progress], str]] = {"tandem": run_tandem, "unsloth": run_unsloth, "trl": run_trl}


def main() -> int:
    """Run one tool; every outcome, error included, ends up in the progress file."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tool", choices=sorted(TOOLS))
    parser.add_argument("--workload", required=True, help="the Workload as JSON")
    parser.add_argument("--model-dir", type=Path, required=True, help="the built-in model's directory")
    parser.add_argument("--cache-dir", type=Path, required=True, help="the cache the model was made in (Tandem's --cache-dir)")
    parser.add_argument("--work", type=Path, required=True, help="scratch directory of this run")
    parser.add_argument("--progress", type=Path, required=True, help="JSON-lines file of events")
    parser.add_argument("--deadline", type=float, required=True, help="epoch seconds by which to stop")
    parser.add_argument("--trl-base", choices=("nf4", "bf16"), default="nf4", help="TRL's base weights (default %(default)s)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    progress = Progress(args.progress, args.deadline)
    progress.write("start", tool=args.tool, pid=os.getpid())
    try:
        stopped = TOOLS[args.tool](Workload.from_json(args.workload), args, progress)
    except BaseException:
        progress.write("error", error=traceback.format_exc()[-6000:])
        return 1
    progress.write("done", stopped=stopped)
    return 0


if __name__ == "__main__":
    sys.exit(main())
