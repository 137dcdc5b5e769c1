"""How long-running core work reports progress without knowing about terminals."""

from __future__ import annotations

from typing import Protocol


class Reporter(Protocol):
    def begin(self, label: str, total: int) -> None: ...

    def advance(self, amount: int) -> None: ...

    def end(self) -> None: ...


class NullReporter:
    def begin(self, label: str, total: int) -> None:
        pass

    def advance(self, amount: int) -> None:
        pass

    def end(self) -> None:
        pass
