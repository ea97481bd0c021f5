"""Dependency output the server silences once at start-up, each item for the reason given beside it.

Each filter matches one message by its exact text and origin, so anything
else a dependency prints still shows; tests/integration/test_startup_output.py
fails on any warning or traceback in a fresh start's output that is not
silenced here.
"""

from __future__ import annotations

import logging
import warnings

BNB_CPU_KERNEL_LOGGER = "bitsandbytes.backends.cpu.ops"
BNB_CPU_KERNEL_MESSAGE = "Failed to load CPU gemm_4bit_forward from kernels-community"


class DropMessage(logging.Filter):
    """A logging filter that drops the records whose message (before formatting) starts with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        """False (drop) for the silenced message, True for everything else."""
        return not str(record.msg).startswith(self.prefix)


def silence_dependency_noise() -> None:
    """Install the filters; call once, before torch, bitsandbytes or transformers are imported."""
    # bitsandbytes >= 0.50, on CPUs with AVX512-BF16, tries at import to fetch a fused 4-bit CPU
    # kernel from the Hugging Face Hub (the optional `kernels` package) and logs a warning when it
    # cannot. The service downloads nothing at run time, and that kernel only serves bitsandbytes'
    # AVX512-BF16 weight layout, which peft_model._keep_cpu_weight_layout turns off on every 4-bit
    # layer: the kernel would never run, with or without `kernels`.
    logging.getLogger(BNB_CPU_KERNEL_LOGGER).addFilter(DropMessage(BNB_CPU_KERNEL_MESSAGE))
    # PEFT 0.21's get_peft_model reads transformers' deprecated `is_gradient_checkpointing` alias
    # (transformers >= 5.23 warns) on every LoadModel, the start-up model's included. Only PEFT can
    # change that; the service itself calls activation_checkpointing_enable.
    warnings.filterwarnings(
        "ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning, module=r"transformers\.modeling_utils"
    )
    # transformers draws tqdm bars while the built-in model is written and weights load. The server
    # reports load phases itself (LoadModel progress events and log lines); carriage-return bars
    # only garble its log.
    from transformers.utils import logging as transformers_logging  # after the filters above: it imports transformers

    transformers_logging.disable_progress_bar()
