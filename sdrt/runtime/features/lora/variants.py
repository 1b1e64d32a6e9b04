"""One component's engines for different merged weights, as each backend can best provide them.

- `SessionVariants` (ONNX Runtime): one session per weight set, created with the merged tensors
  as initializer overrides, kept most-recently-used first within a memory budget, so switching
  back to a set is free and a new set costs one session build. Requests with different sets
  run at once.
- `RefitVariants` (TensorRT): the one engine is refitted when the set changes; every changed
  tensor is written from the pristine weights (plus the new deltas), never from the engine's
  current ones, so A -> B -> A gives A's weights exactly. A switch waits for the requests
  running on the current set to finish.

A key names a weight set (the LoRAs' hashes and weights); the empty key is the base weights.
`tensors()` computes the set's merged initializers and is called only on a miss.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator

import numpy as np

from sdrt.runtime.engines.base import Engine

Tensors = Callable[[], dict[str, np.ndarray]]


class SessionVariants:
    def __init__(
        self, base: Engine, make: Callable[[dict[str, np.ndarray]], Engine], session_bytes: int, budget_bytes: int
    ):
        self.base = base
        self.make = make
        self.session_bytes = max(1, session_bytes)
        self.budget_bytes = budget_bytes
        self._engines: OrderedDict[tuple, Engine] = OrderedDict()
        self._building: dict[tuple, threading.Lock] = {}
        self._lock = threading.Lock()
        self.builds = 0

    @property
    def cached(self) -> int:
        return len(self._engines)

    @contextlib.contextmanager
    def engine(self, key: tuple, tensors: Tensors) -> Iterator[Engine]:
        if not key:
            yield self.base
            return
        with self._lock:
            building = self._building.setdefault(key, threading.Lock())
        with building:  # one build per key, however many requests ask for it at once
            with self._lock:
                engine = self._engines.get(key)
                if engine is not None:
                    self._engines.move_to_end(key)
            if engine is None:
                engine = self.make(tensors())
                self.builds += 1
                with self._lock:
                    self._engines[key] = engine
                    # Within budget, always keeping the newest (a request in flight keeps its
                    # engine alive until it ends).
                    while len(self._engines) > 1 and len(self._engines) * self.session_bytes > self.budget_bytes:
                        self._engines.popitem(last=False)
            with self._lock:
                self._building.pop(key, None)
        yield engine


class RefitVariants:
    def __init__(self, engine, pristine: Callable[[str], np.ndarray]):
        self.base = engine
        self.pristine = pristine
        self.key: tuple = ()
        self.changed: set[str] = set()
        self.users = 0
        self.refits = 0
        self._condition = threading.Condition()

    @contextlib.contextmanager
    def engine(self, key: tuple, tensors: Tensors) -> Iterator[Engine]:
        with self._condition:
            while self.users and self.key != key:
                self._condition.wait()
            if self.key != key:
                new = tensors() if key else {}
                restored = {name: self.pristine(name) for name in self.changed - set(new)}
                if restored or new:
                    self.base.refit({**restored, **new})
                    self.refits += 1
                self.key, self.changed = key, set(new)
            self.users += 1
        try:
            yield self.base
        finally:
            with self._condition:
                self.users -= 1
                self._condition.notify_all()
