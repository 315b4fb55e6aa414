"""`python -m trainer ARGS`: parse and validate the config, run, and turn any failure into one last error line.

    python -m trainer --model-id builtin:tiny-gemma3 --dataset builtin:synthetic-pets --output-dir /tmp/run
    python -m trainer --config /mnt/gcs/runs/r1/train_config.json --output-dir /mnt/gcs/runs/r1

Exit codes: 0 done (or already done), 2 bad configuration, 1 any other failure. On failure the last stdout line is
an `{"event": "error", ...}` JSON object and the last stderr line is `error: <reason>`.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from trainer.config import ConfigError, TrainConfig
from trainer.events import JsonlSink, scrub


class Terminated(Exception):
    """SIGTERM: Cloud Run cancels or times out a task with it; say so instead of dying silently."""


def _on_sigterm(signum, frame):
    raise Terminated("received SIGTERM (task cancelled or timed out); run again to resume from the last checkpoint")


def describe(exc: BaseException) -> str:
    """One line saying what failed, with a fix where we know one."""
    name = type(exc).__name__
    raw = str(exc)
    if "Original Traceback" in raw:  # re-raised from a DataLoader worker: keep the worker's own last line
        raw = raw.strip().splitlines()[-1].split(": ", 1)[-1]
    text = " ".join(raw.split()) or name
    if name == "OutOfMemoryError":
        return (f"out of GPU memory ({text[:200]}): lower --batch-size, use --gradient-checkpointing on, "
                "or --quantization 4bit")
    if isinstance(exc, OSError) and exc.filename:
        return f"{name}: {exc.strerror or text} ({exc.filename})"
    return f"{name}: {text}"


def fail(message: str, sink) -> None:
    message = scrub(message)
    sink.emit("error", message=message)
    sys.stdout.flush()
    print(f"error: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = TrainConfig.from_args(sys.argv[1:] if argv is None else argv).validate()
    except ConfigError as exc:
        fail(f"invalid configuration: {exc}", JsonlSink(None))
        return 2
    sink = JsonlSink(Path(cfg.output_dir) / "events.jsonl")
    signal.signal(signal.SIGTERM, _on_sigterm)
    # Progress bars would flood Cloud Logging with carriage-return lines; events carry the progress instead.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        from trainer.run import run  # heavy imports (torch, transformers) only after the config is known good

        return run(cfg, sink)
    except KeyboardInterrupt:
        fail("interrupted", sink)
        return 130
    except Exception as exc:  # noqa: BLE001 - the contract: every failure ends as one reason line, exit 1
        try:
            fail(describe(exc), sink)
        except OSError:  # the output dir itself is unwritable: still say why, on stdout/stderr
            fail(describe(exc), JsonlSink(None))
        return 1


if __name__ == "__main__":
    sys.exit(main())
