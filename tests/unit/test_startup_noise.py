"""The start-up filters silence exactly the dependency messages they name, and nothing else."""

from __future__ import annotations

import logging
import warnings

from service.startup_noise import BNB_CPU_KERNEL_LOGGER, BNB_CPU_KERNEL_MESSAGE, DropMessage, silence_dependency_noise


def _record(message: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord(BNB_CPU_KERNEL_LOGGER, logging.WARNING, "ops.py", 253, message, args, None)


def test_the_bitsandbytes_kernels_warning_is_dropped_and_other_records_pass() -> None:
    drop = DropMessage(BNB_CPU_KERNEL_MESSAGE)
    # bitsandbytes 0.50's exact call: logger.warning("Failed to load ... kernels-community: %s. Please ...", exc)
    kernels = _record(BNB_CPU_KERNEL_MESSAGE + ": %s. Please make sure you already `pip install kernels`", ModuleNotFoundError("No module named 'kernels'"))
    assert not drop.filter(kernels)
    assert drop.filter(_record("Failed to load libbitsandbytes_cpu.so: %s", OSError("missing")))


def test_silencing_installs_on_the_named_logger_and_leaves_other_warnings(monkeypatch) -> None:
    logger = logging.getLogger(BNB_CPU_KERNEL_LOGGER)
    monkeypatch.setattr(logger, "filters", [])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        silence_dependency_noise()
        assert any(isinstance(f, DropMessage) for f in logger.filters)
        for message in ("`is_gradient_checkpointing` is deprecated and will be removed in v6.", "`past_key_values` is deprecated"):
            warnings.warn_explicit(message, FutureWarning, "modeling_utils.py", 3312, module="transformers.modeling_utils")
        warnings.warn_explicit("`is_gradient_checkpointing` is deprecated", FutureWarning, "ours.py", 1, module="service.runtime.peft_model")
    assert [(str(w.message), w.filename) for w in caught] == [("`past_key_values` is deprecated", "modeling_utils.py"), ("`is_gradient_checkpointing` is deprecated", "ours.py")]
