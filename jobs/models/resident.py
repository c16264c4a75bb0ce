"""Loaded models kept in the worker process for its next jobs: loading multi-GB weights onto a
GPU takes longer than many reconstructions, so a process-pool worker that runs job after job
loads each (name, version, device) once. Least recently used models beyond `max_entries` are
dropped (and the CUDA allocator's cache emptied) so that residency never starves the next model.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
Key = tuple[str, str, str]


class ResidentModels:
    def __init__(self, max_entries: int = 2) -> None:
        self.max_entries = max_entries
        self._models: OrderedDict[Key, Any] = OrderedDict()
        self._lock = threading.RLock()
        self.loads = 0  # how many times a loader actually ran (observable by tests and logs)

    def get_or_load(self, name: str, version: str, device: str, loader: Callable[[], T]) -> T:
        """The resident model, or `loader()`'s result, kept for next time."""
        key = (name, version, device)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            while len(self._models) >= max(self.max_entries, 1):
                self._drop(next(iter(self._models)))
            model = loader()
            self.loads += 1
            self._models[key] = model
            return model

    def contains(self, name: str, version: str, device: str) -> bool:
        with self._lock:
            return (name, version, device) in self._models

    def evict(self, name: str, version: str, device: str) -> bool:
        with self._lock:
            if (name, version, device) not in self._models:
                return False
            self._drop((name, version, device))
            return True

    def clear(self) -> None:
        with self._lock:
            for key in list(self._models):
                self._drop(key)

    def keys(self) -> list[Key]:
        with self._lock:
            return list(self._models)

    def _drop(self, key: Key) -> None:
        del self._models[key]
        if key[2].startswith("cuda") and "torch" in sys.modules:  # never import torch just for this
            torch = sys.modules["torch"]
            if torch.cuda.is_initialized():
                torch.cuda.empty_cache()


# The worker process's models (one process runs one job at a time on its GPU).
RESIDENT = ResidentModels()
