"""Named registries of small objects (operations, partition families, init rules): a name is
taken once, and an unknown name raises with the registered ones."""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")

__all__ = ["Registry"]


class Registry(dict[str, T], Generic[T]):
    """A dict of named objects with checked registration and lookup.

    >>> colors = Registry("color")
    >>> colors.register("red", 1)
    1
    >>> colors.lookup("blue")
    Traceback (most recent call last):
    ValueError: unknown color 'blue'; registered: red
    """

    def __init__(self, what: str):
        super().__init__()
        self.what = what

    def register(self, name: str, value: T) -> T:
        """Add ``value`` under ``name``; a name is taken once."""
        if name in self:
            raise ValueError(f"{self.what} {name!r} is already registered")
        self[name] = value
        return value

    def lookup(self, name: str) -> T:
        """The object called ``name``; raises with the registered names otherwise."""
        try:
            return self[name]
        except (KeyError, TypeError):
            raise ValueError(
                f"unknown {self.what} {name!r}; registered: {', '.join(self)}"
            ) from None
