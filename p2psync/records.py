"""Quicker construction for the frozen dataclasses a round builds per file.

A frozen dataclass's generated `__init__` sets each field through
`object.__setattr__`, the "tiny performance penalty" the dataclasses
documentation warns of; for a record of nine fields it is 1.0-1.4 us a call,
and a round of a 10,000-file tree builds several such records per file (its
directory entry, versions, index row). `quick_frozen` swaps in an `__init__`
with the same signature and defaults that fills the new instance's `__dict__`
directly, about 3x quicker; equality, hashing, `repr`, `dataclasses.replace`
and the refusal to assign after construction are the dataclass's own, unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

__all__ = ["quick_frozen"]

T = TypeVar("T")


def quick_frozen(cls: type[T]) -> type[T]:
    """Give the frozen dataclass `cls` the quick `__init__` (apply above `@dataclass`).

    Only for plain records: every field taken by `__init__` positionally or by
    keyword, defaults but no default factories, no `__post_init__`, no slots.
    Raises `TypeError` for anything else, when the class is defined.
    """
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen:
        raise TypeError(f"{cls.__name__}: quick_frozen is for frozen dataclasses")
    if hasattr(cls, "__post_init__") or hasattr(cls, "__slots__"):
        raise TypeError(f"{cls.__name__}: quick_frozen cannot keep __post_init__ or slots")
    namespace: dict[str, Any] = {}
    signature, body = [], []
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        if not field.init or field.kw_only or field.default_factory is not dataclasses.MISSING:
            raise TypeError(f"{cls.__name__}.{field.name}: quick_frozen wants plain positional fields")
        if field.default is dataclasses.MISSING:
            signature.append(field.name)
        else:
            namespace[f"_default_{field.name}"] = field.default
            signature.append(f"{field.name}=_default_{field.name}")
        body.append(f"    fields[{field.name!r}] = {field.name}\n")
    source = f"def __init__(self, {', '.join(signature)}):\n    fields = self.__dict__\n{''.join(body)}"
    exec(source, namespace)  # the same way dataclasses writes its own __init__
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__doc__ = f"A {cls.__name__} (see p2psync.records.quick_frozen)."
    cls.__init__ = init  # type: ignore[method-assign]
    return cls
