"""The methods the engine offers, by name; a new method is one new module added here."""

from __future__ import annotations

import dataclasses
from typing import Any

from samkv.errors import InvalidRequest, UnknownMethod
from samkv.methods.base import Method, PlanContext
from samkv.methods.cacheblend import CacheBlend
from samkv.methods.epic import Epic
from samkv.methods.full import Full
from samkv.methods.naive import Naive
from samkv.methods.samkv import SamKV
from samkv.methods.snapkv import SnapKV

METHODS: dict[str, type[Method]] = {
    cls.name: cls for cls in (Full, Naive, CacheBlend, Epic, SnapKV, SamKV)
}


def make_method(name: str, **params: Any) -> Method:
    """The method `name` with `params`; unknown names and parameters raise with what is accepted."""
    if name not in METHODS:
        raise UnknownMethod(f"unknown method {name!r}; expected one of {', '.join(METHODS)}")
    cls = METHODS[name]
    accepted = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(params) - accepted)
    if unknown:
        listed = ", ".join(sorted(accepted)) or "none"
        raise InvalidRequest(f"method {name!r} has no parameter {', '.join(unknown)}; it accepts: {listed}")
    return cls(**params)


__all__ = ["METHODS", "Method", "PlanContext", "make_method"]
