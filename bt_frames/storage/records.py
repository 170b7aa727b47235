"""Immutable records that are tuples underneath: the base of ``BlockInfo`` and ``BlockEntry``.

An open makes one record per block (thousands), and a frozen dataclass costs
about four times more to construct than a tuple. A record keeps its fields in
a tuple whose layout is private to its class (use its properties), is equal
to and hashed like another record of the same class by its first ``KEY``
fields (cached derived fields such as a parsed name come after them), and is
copied and pickled through its constructor's first ``NEW_ARGS`` fields.
"""

from __future__ import annotations

from typing import Any, ClassVar


class Record(tuple[Any, ...]):
    __slots__ = ()
    KEY: ClassVar[int]  # fields compared and hashed
    NEW_ARGS: ClassVar[int]  # fields the constructor takes, in order

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, tuple)
        return self[: self.KEY] == other[: self.KEY]

    def __ne__(self, other: object) -> bool:
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    def __hash__(self) -> int:
        return hash(self[: self.KEY])

    def __getnewargs__(self) -> tuple[Any, ...]:  # copy/pickle: the constructor's arguments
        return tuple(self[: self.NEW_ARGS])
