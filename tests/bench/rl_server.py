"""``python -m service`` for the RL benchmark, optionally with vLLM in eager mode (--quick's faster engine start).

    python tests/bench/rl_server.py [--eager] SERVICE-FLAGS...

Everything after --eager goes to the service's own command line unchanged.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    """Swap in eager engine options when asked, then run the service's main."""
    flags = sys.argv[1:]
    if flags[:1] == ["--eager"]:
        from service.runtime.engines import vllm_backend

        vllm_backend.OPTIONS = vllm_backend.VllmOptions(enforce_eager=True)
        flags = flags[1:]
    sys.argv = ["python -m service", *flags]
    from service.__main__ import main as serve

    serve()


if __name__ == "__main__":
    main()
