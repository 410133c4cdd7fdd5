"""Run one lorakit command line and SIGKILL its own process at a chosen point: the crash-safety tests' subprocess.

    python -m tests.integration.kill_driver '{"argv": [...], "kill": {...}}'

Kill points (each hooks a public API only):
- {"at": "step", "step": N}: right after optimizer step N (a Trainer callback added through Trainer.train)
- {"at": "pause", "step": N, "until": PATH}: right after optimizer step N, write PATH.paused and wait until PATH exists
  (the test does what it wants meanwhile, then lets the command go on or kills it)
- {"at": "save", "step": N, "file": "scheduler.pt"}: halfway through writing that file of checkpoint-N (torch.save)
- {"at": "call", "target": "module.attr", "when": "after"|"before"}: around a function lorakit calls
- {"at": "replace", "nth": K, "name": "x"}: after the K-th os.replace whose destination is named `name`
- {} : no kill (the test kills after a seeded delay, or lets it finish)
SIGKILL gives no chance to clean up: whatever is on disk at that instant is what the next command finds.
"""

from __future__ import annotations

import functools
import importlib
import io
import json
import os
import signal
import sys
import time


def die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def install(kill: dict) -> None:
    at = kill.get("at")
    if at in ("step", "save", "pause"):
        from transformers import Trainer, TrainerCallback

        class At(TrainerCallback):
            step = 0

            def on_step_end(self, args, state, control, **kwargs):
                At.step = state.global_step
                if at == "step" and state.global_step == kill["step"]:
                    die()
                if at == "pause" and state.global_step == kill["step"]:
                    with open(kill["until"] + ".paused", "w") as marker:
                        marker.write(str(os.getpid()))
                    while not os.path.exists(kill["until"]):
                        time.sleep(0.1)

        train = Trainer.train

        @functools.wraps(train)
        def train_with_kill(self, *args, **kwargs):
            self.add_callback(At())
            return train(self, *args, **kwargs)

        Trainer.train = train_with_kill
        if at == "save":
            import torch

            save = torch.save

            def save_and_die(obj, f, *args, **kwargs):
                path = str(f)
                if At.step == kill["step"] and path.endswith(os.sep + kill["file"]):
                    buffer = io.BytesIO()
                    save(obj, buffer, *args, **kwargs)
                    with open(path, "wb") as handle:
                        handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                    die()
                return save(obj, f, *args, **kwargs)

            torch.save = save_and_die
    elif at == "call":
        module_name, _, attr = kill["target"].rpartition(".")
        module = importlib.import_module(module_name)
        original = getattr(module, attr)

        @functools.wraps(original)
        def wrapped(*args, **kwargs):
            if kill.get("when") == "before":
                die()
            result = original(*args, **kwargs)
            die()
            return result

        setattr(module, attr, wrapped)
    elif at == "replace":
        replace = os.replace
        seen = [0]

        def replace_and_die(src, dst, *args, **kwargs):
            replace(src, dst, *args, **kwargs)
            if os.path.basename(os.fspath(dst)) == kill["name"]:
                seen[0] += 1
                if seen[0] == kill.get("nth", 1):
                    die()

        os.replace = replace_and_die


def main() -> None:
    spec = json.loads(sys.argv[1])
    install(spec.get("kill") or {})
    from lorakit.cli import app

    sys.argv = ["lorakit", *spec["argv"]]
    app()


if __name__ == "__main__":
    main()
