"""Value classes that cost nothing to define.

``srt-kernel run`` is a command a user waits for, and every millisecond of
its start-up shows.  :mod:`dataclasses` builds each class by compiling
generated source (about half a millisecond per class) and imports
:mod:`inspect` and :mod:`ast`; this module gives the same declarations
(annotated fields, defaults, ``field(default_factory=...)``,
``__post_init__``, :func:`replace`) with one generic ``__init__``, so
defining a class costs a dictionary walk.  Type checkers see them as
dataclasses (``dataclass_transform``).

A subclass of :class:`Record` is frozen (hashable, assignment refused);
``class C(Record, frozen=False)`` makes a mutable one (not hashable).
"""

from __future__ import annotations

from collections.abc import Callable

# Not typing.TYPE_CHECKING: importing typing costs the launcher's start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, ClassVar, TypeVar, dataclass_transform

    _T = TypeVar("_T")
    _R = TypeVar("_R", bound="Record")
else:

    def dataclass_transform(**_kwargs: object) -> Callable[[type], type]:
        return lambda cls: cls


_MISSING: Any = object()


class _Factory:
    __slots__ = ("make",)

    def __init__(self, make: Callable[[], object]) -> None:
        self.make = make


def field(*, default_factory: Callable[[], _T]) -> _T:
    """A field whose default is made fresh for each instance."""
    factory: Any = _Factory(default_factory)
    return factory  # type: ignore[no-any-return]


class FrozenRecordError(AttributeError):
    """Assignment to a field of a frozen record."""


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
class Record:
    """Base of the project's value classes; see the module's docstring."""

    _fields: ClassVar[tuple[str, ...]] = ()
    _defaults: ClassVar[dict[str, Any]] = {}
    _frozen: ClassVar[bool] = True

    def __init_subclass__(cls, *, frozen: bool = True, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        names = list(cls._fields)
        defaults = dict(cls._defaults)
        # not inspect.get_annotations: importing inspect is the cost avoided
        own = cls.__dict__.get("__annotations__", {})  # noqa: RUF063
        for name, annotation in own.items():
            if str(annotation).startswith(("ClassVar", "typing.ClassVar")):
                continue
            if name not in names:
                names.append(name)
            if name in cls.__dict__:
                defaults[name] = cls.__dict__[name]
                if isinstance(defaults[name], _Factory):
                    delattr(cls, name)
            elif defaults and name not in defaults:
                raise TypeError(
                    f"{cls.__name__}.{name} has no default but follows a "
                    "field that has one"
                )
        cls._fields = tuple(names)
        cls._defaults = defaults
        cls._frozen = frozen
        if not frozen:
            cls.__hash__ = None  # type: ignore[assignment]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        fields = self._fields
        if len(args) > len(fields):
            raise TypeError(
                f"{type(self).__name__}() takes {len(fields)} positional "
                f"arguments but {len(args)} were given"
            )
        values = dict(zip(fields, args, strict=False))
        for name, value in kwargs.items():
            if name not in fields:
                raise TypeError(
                    f"{type(self).__name__}() got an unexpected keyword "
                    f"argument {name!r}"
                )
            if name in values:
                raise TypeError(
                    f"{type(self).__name__}() got multiple values for {name!r}"
                )
            values[name] = value
        for name in fields:
            if name in values:
                value = values[name]
            else:
                value = self._defaults.get(name, _MISSING)
                if value is _MISSING:
                    raise TypeError(
                        f"{type(self).__name__}() missing required argument {name!r}"
                    )
                if isinstance(value, _Factory):
                    value = value.make()
            object.__setattr__(self, name, value)
        post_init = getattr(self, "__post_init__", None)
        if post_init is not None:
            post_init()

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self._fields)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields)
        return f"{type(self).__name__}({inner})"

    def __setattr__(self, name: str, value: Any) -> None:
        if self._frozen:
            raise FrozenRecordError(f"cannot assign to field {name!r}")
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        if self._frozen:
            raise FrozenRecordError(f"cannot delete field {name!r}")
        object.__delattr__(self, name)


def replace(record: _R, **changes: Any) -> _R:
    """A copy of ``record`` with some fields changed (validated again)."""
    values = {name: getattr(record, name) for name in record._fields}
    values.update(changes)
    return type(record)(**values)


def as_dict(record: Record) -> dict[str, Any]:
    """The fields of ``record``, shallowly, in declaration order."""
    return {name: getattr(record, name) for name in record._fields}
