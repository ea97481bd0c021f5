"""A text progress bar for LoadModel, written to a terminal (or one line per event elsewhere)."""

from __future__ import annotations

from typing import TextIO

from tandem.v1 import tandem_pb2 as pb

BAR_WIDTH = 30


def phase_name(phase: int) -> str:
    """ "weights" for LOAD_PHASE_WEIGHTS, and so on."""
    return pb.LoadPhase.Name(phase).removeprefix("LOAD_PHASE_").lower()


def render(progress: pb.LoadProgress) -> str:
    """One line: phase, a bar when the phase counts its work, the message and elapsed seconds."""
    parts = [f"{phase_name(progress.phase):<9}"]
    if progress.total:
        filled = min(BAR_WIDTH, BAR_WIDTH * progress.done // progress.total)
        parts.append(f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {progress.done}/{progress.total} {progress.unit}".rstrip())
    parts.append(progress.message)
    parts.append(f"{progress.elapsed_seconds:6.1f}s")
    return "  ".join(parts)


class ProgressBar:
    """Redraws one line in place on a terminal; elsewhere prints each event on its own line."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._in_place = stream.isatty()
        self._width = 0

    def update(self, progress: pb.LoadProgress) -> None:
        """Show one progress event."""
        line = render(progress)
        if self._in_place:
            self._stream.write("\r" + line.ljust(self._width))
            self._width = len(line)
        else:
            self._stream.write(line + "\n")
        self._stream.flush()

    def finish(self) -> None:
        """End the in-place line."""
        if self._in_place and self._width:
            self._stream.write("\n")
            self._stream.flush()
