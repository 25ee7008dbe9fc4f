"""``evolve``: :func:`dataclasses.replace` for the frozen, slotted values a call carries through the pipeline.

Every stage that adds to a call hands the next one a changed copy of a frozen value (:class:`CallContext`, its
:class:`Outcome`, the :class:`Decision`): about six copies per ``tools/call``. ``dataclasses.replace`` pays for
generality on each — it walks ``fields()``, checks every field's ``init`` flag, builds keyword arguments and runs
the generated ``__init__``, whose frozen guard sets each field through ``object.__setattr__`` — about 9 µs for the
26 fields of a CallContext, ~50 µs of every call. The copy it makes is plain: same values but the changed ones.

:func:`evolve` makes the same copy with a function written for the class once (as ``dataclasses`` writes its
``__init__``): a new instance, then one line per field, ``set_<field>(new, old.<field>)`` through the slot's own
descriptor — no loop, no keyword arguments, no frozen guard. A loop over the descriptors took ~490 bytecodes per
CallContext copy (counted per function with an opcode trace; three such copies a call); the written-out copy
takes the instructions of the reads and writes alone (bench/bench_instructions.py: −1.7 to −2.5 % of a default call).

It takes what ``replace`` takes for these classes and refuses what it cannot copy the same way: a class that is
not a slotted dataclass, a field with ``init=False``, or a ``__post_init__`` (which ``replace`` would run again)
get ``dataclasses.replace`` itself, so the result is always what ``replace`` gives. An unknown field name is a
``TypeError``, as there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["evolve"]

T = TypeVar("T")

_Setter = Callable[[Any, Any], None]


@dataclasses.dataclass(frozen=True, slots=True)
class _Plan:
    """How to copy one class: its written-out copier and its fields' slot setters by name."""

    cls: type
    copy: Callable[[Any], Any]
    setters: dict[str, _Setter]


_PLANS: dict[type, _Plan | None] = {}


def evolve(obj: T, /, **changes: Any) -> T:
    """A copy of the frozen dataclass instance ``obj`` with ``changes`` applied: ``dataclasses.replace(obj, ...)``."""
    cls = type(obj)
    plan = _PLANS[cls] if cls in _PLANS else _plan_for(cls)
    if plan is None:
        return dataclasses.replace(obj, **changes)  # type: ignore[type-var]
    new = plan.copy(obj)
    setters = plan.setters
    for name, value in changes.items():
        set_field = setters.get(name)
        if set_field is None:
            raise TypeError(f"{cls.__name__}.__init__() got an unexpected keyword argument {name!r}")
        set_field(new, value)
    return new  # type: ignore[no-any-return]


def _plan_for(cls: type) -> _Plan | None:
    """The copy plan of ``cls``, made once; None when only ``dataclasses.replace`` copies it faithfully."""
    plan = _make_plan(cls)
    _PLANS[cls] = plan
    return plan


def _make_plan(cls: type) -> _Plan | None:
    if not dataclasses.is_dataclass(cls) or hasattr(cls, "__post_init__") or "__slots__" not in cls.__dict__:
        return None
    fields = dataclasses.fields(cls)
    if any(not f.init for f in fields):
        return None
    descriptors = [cls.__dict__.get(f.name) for f in fields]
    if set(cls.__dict__["__slots__"]) != {f.name for f in fields} or not all(
        hasattr(d, "__get__") and hasattr(d, "__set__") for d in descriptors
    ):
        return None  # extra slots (or a field shadowed by something else): not a plain copy of the fields
    setters = {f.name: d.__set__ for f, d in zip(fields, descriptors, strict=True)}  # type: ignore[union-attr]
    return _Plan(cls, _copier(cls, [f.name for f in fields], setters), setters)


def _copier(cls: type, names: list[str], setters: dict[str, _Setter]) -> Callable[[Any], Any]:
    """``def copy(old)``: a new ``cls`` holding ``old``'s value of every field, written out field by field. The
    names are a dataclass's fields (identifiers), read as attributes; nothing else enters the source."""
    env: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    lines = ["def copy(old):", "    new = _new(_cls)"]
    for i, name in enumerate(names):
        assert name.isidentifier(), name
        env[f"_set{i}"] = setters[name]
        lines.append(f"    _set{i}(new, old.{name})")
    lines.append("    return new")
    exec("\n".join(lines), env)  # the source is made of field names only, as dataclasses makes __init__
    copy: Callable[[Any], Any] = env["copy"]
    return copy
