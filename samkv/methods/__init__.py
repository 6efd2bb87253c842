"""The methods the engine offers, by name; a new method is one new module (or package) added here.

Each method declares what it does as class attributes (`sparse`, `recomputes`) and its
parameters as dataclass fields; `method_info` reads them for the app and the benchmark.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from samkv.errors import InvalidRequest, UnknownMethod
from samkv.methods.base import Method, PlanContext
from samkv.methods.cacheblend import CacheBlend
from samkv.methods.epic import Epic
from samkv.methods.full import Full
from samkv.methods.naive import Naive
from samkv.methods.samkv import SamKV, SamKVQuestion
from samkv.methods.snapkv import SnapKV

METHODS: dict[str, type[Method]] = {
    cls.name: cls for cls in (Full, Naive, CacheBlend, Epic, SnapKV, SamKV, SamKVQuestion)
}


@dataclass(frozen=True)
class MethodInfo:
    """What a method is, as the app and the benchmark need to know it."""

    name: str
    sparse: bool  # decodes from a cache smaller than the context
    recomputes: bool  # recomputes some context tokens' KV over the other documents
    params: dict[str, Any]  # parameter name -> default


def method_info(name: str) -> MethodInfo:
    """The capabilities and parameters of method `name`; unknown names raise UnknownMethod."""
    cls = _method_class(name)
    params = {
        f.name: f.default if f.default is not dataclasses.MISSING else None for f in dataclasses.fields(cls)
    }
    return MethodInfo(name, cls.sparse, cls.recomputes, params)


def _method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise UnknownMethod(f"unknown method {name!r}; expected one of {', '.join(METHODS)}")
    return METHODS[name]


def make_method(name: str, **params: Any) -> Method:
    """The method `name` with `params`; unknown names and parameters raise with what is accepted."""
    cls = _method_class(name)
    accepted = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(params) - accepted)
    if unknown:
        listed = ", ".join(sorted(accepted)) or "none"
        raise InvalidRequest(f"method {name!r} has no parameter {', '.join(unknown)}; it accepts: {listed}")
    return cls(**params)


__all__ = ["METHODS", "Method", "MethodInfo", "PlanContext", "make_method", "method_info"]
