"""OUT/.ray-work: the pieces a distributed stage has finished, so that a rerun resumes.

Every piece is written atomically (temporary file, fsync, rename), so a piece that exists is
complete. The settings that decide the outputs and the plan (the byte ranges, the reducers) are
written before the first piece; a rerun with other settings is refused, and a rerun with the same
settings reuses the plan whatever its own number of workers.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import numpy as np

from ...errors import DataError
from ...fileio import atomic_open, write_json_atomic

WORK = ".ray-work"


class WorkDir:
    def __init__(self, out: Path):
        self.path = Path(out) / WORK

    def file(self, name: str) -> Path:
        return self.path / name

    def done(self, name: str) -> bool:
        return (self.path / name).exists()

    def save_arrays(self, name: str, **arrays) -> None:
        with atomic_open(self.path / name, "wb") as handle:
            np.savez(handle, **arrays)

    def load_arrays(self, name: str):
        return np.load(self.path / name)

    def save_json(self, name: str, obj) -> None:
        write_json_atomic(self.path / name, obj)

    def load_json(self, name: str):
        return json.loads((self.path / name).read_text())

    def settings(self, settings: dict, make_plan: Callable[[], dict]) -> dict:
        """The plan of this run: the saved one when `settings` match the saved ones (a resumed run),
        else a new one from `make_plan()` (saved before any piece). Other settings are refused."""
        saved = self.path / "settings.json"
        if saved.exists():
            previous = json.loads(saved.read_text())
            if previous != settings:
                changed = sorted(k for k in set(settings) | set(previous) if previous.get(k) != settings.get(k))
                raise DataError(f"the unfinished run in this directory used different {changed}",
                                where=str(self.path.parent),
                                hint="run with the same inputs and settings to resume, or --overwrite to start over")
            if self.done("plan.json"):
                return self.load_json("plan.json")
        self.path.mkdir(parents=True, exist_ok=True)
        write_json_atomic(saved, settings)
        plan = make_plan()
        self.save_json("plan.json", plan)
        return plan

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
