"""Runs every method configuration on the same questions, documents, order and decoding settings."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.bench.generator import Question
from app.bench.metrics import (
    answer_kept,
    answer_token_spans,
    contains_match,
    exact_match,
    f1,
    normalize,
)
from app.bench.sentences import cut_answer, first_sentence_ended
from samkv import DocumentKV, DocumentSource, Engine
from samkv.methods import method_info

ABLATIONS: dict[str, dict[str, Any]] = {
    "complement=False": {"complement": False},
    "recompute=False": {"recompute": False},
    "global_budget=False": {"global_budget": False},
    "debias=none": {"debias": "none"},
    "debias=difference": {"debias": "difference"},
    "block_size=1": {"block_size": 1},
    # The complementary term's formulations (samkv.complement), each at its own λ.
    "complement=summary": {"complement_mode": "summary", "complement_weight": 0.5},
    "complement=reprobe": {"complement_mode": "reprobe", "complement_weight": 0.3},
    "complement=entity": {"complement_mode": "entity", "complement_weight": 0.3},
}


def parse_value(text: str) -> Any:
    """A parameter's value written on the command line: an int, a float, a bool, a tuple (a,b) or text."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if text in ("True", "False"):
        return text == "True"
    if "," in text:
        return tuple(parse_value(part) for part in text.split(","))
    return text


def ablation_params(name: str) -> dict[str, Any]:
    """The samkv parameters of ablation `name`: one of ABLATIONS, or any `parameter=value`."""
    if name in ABLATIONS:
        return ABLATIONS[name]
    key, equals, value = name.partition("=")
    if not equals or not key.strip():
        raise ValueError(f"unknown ablation {name!r}: one of {', '.join(ABLATIONS)}, or parameter=value")
    return {key.strip(): parse_value(value.strip())}


# The stats every record keeps besides the stage times (every stats key ending in "_ms").
STAT_KEYS = ("tokens_per_s", "kv_bytes_decode", "kv_bytes_peak", "recomputed_tokens", "kept_tokens",
             "context_tokens", "generated_tokens")


@dataclass(frozen=True)
class MethodConfig:
    """One row of the results: a method, its ratio (keep ratio, or recompute ratio for cacheblend)."""

    label: str
    method: str
    keep_ratio: float
    params: dict[str, Any] = field(default_factory=dict)


def ratio_parameter(method: str) -> str | None:
    """The parameter a ratio row sets, from what the method declares (samkv.methods.method_info):
    `keep_ratio` for a sparse method, `recompute_ratio` for one that recomputes a share, None
    for a method without a ratio."""
    info = method_info(method)
    if info.sparse and "keep_ratio" in info.params:
        return "keep_ratio"
    return "recompute_ratio" if "recompute_ratio" in info.params else None


def runs_at_defaults(method: str) -> bool:
    """Whether the method gets a row at its own defaults: it has no ratio, or its ratio is
    optional (default None, e.g. epic's paper k beside its equal-recompute rows)."""
    parameter = ratio_parameter(method)
    return parameter is None or method_info(method).params[parameter] is None


def method_configs(
    methods: Sequence[str],
    keep_ratios: Sequence[float],
    ablations: Iterable[str] = tuple(ABLATIONS),
    ablation_ratio: float = 0.15,
    extra_params: dict[str, dict[str, Any]] | None = None,
) -> list[MethodConfig]:
    """The rows to run; `full` first, since agreement is measured against it."""
    extra_params = extra_params or {}
    configs: list[MethodConfig] = []
    for method in sorted(set(methods), key=lambda m: (m != "full", list(methods).index(m))):
        base = dict(extra_params.get(method, {}))
        parameter = ratio_parameter(method)
        if runs_at_defaults(method):
            configs.append(MethodConfig(method, method, 1.0, base))
        if parameter is not None:
            configs += [MethodConfig(f"{method}@{r:g}", method, r, {**base, parameter: r}) for r in keep_ratios]
    if "samkv" in methods:
        base = dict(extra_params.get("samkv", {}))
        for name in ablations:
            configs.append(
                MethodConfig(f"samkv[{name}]@{ablation_ratio:g}", "samkv", ablation_ratio,
                             {**base, "keep_ratio": ablation_ratio, **ablation_params(name)})
            )
    return configs


SourceFactory = Callable[[list[DocumentKV]], DocumentSource | list[DocumentKV]]


def run_questions(
    engine: Engine,
    questions: Sequence[Question],
    configs: Sequence[MethodConfig],
    max_new_tokens: int = 32,
    answer_prefix: str = "",
    source_factory: SourceFactory | None = None,
    on_encoded: Callable[[list[DocumentKV], list[str]], None] | None = None,
    on_step: Callable[[dict[str, Any]], None] | None = None,
    before_generate: Callable[[], None] | None = None,
    first_question: int = 0,
) -> list[dict[str, Any]]:
    """One record per (question, configuration), from question `first_question` on.

    `on_encoded` receives each question's caches once (e.g. to store them); `source_factory`
    then opens them for every configuration, and the time it takes counts towards the time to
    first token, as it would in the service. `before_generate` runs before each configuration
    opens its source (e.g. to drop the disk tier's pages, so every method reads caches cold).
    `on_step` receives each record as it is made. Answers are cut after their first sentence or
    line; `hit_limit` says whether an answer ran into `max_new_tokens` before such an end.
    """
    records: list[dict[str, Any]] = []
    for index, item in enumerate(questions[first_question:], start=first_question):
        documents = engine.encode_documents(list(item.documents)) if item.documents else []
        if on_encoded:
            on_encoded(documents, list(item.documents))
        full_text: str | None = None
        spans = answer_token_spans(context_pieces(engine, documents), item.answers)
        for config in configs:
            if before_generate:
                before_generate()
            opened = time.perf_counter()
            source = source_factory(documents) if source_factory else documents
            open_ms = (time.perf_counter() - opened) * 1000
            out = engine.generate(
                item.question, source, config.method, max_new_tokens=max_new_tokens,
                score_answer=item.answers[0], answer_prefix=answer_prefix, stop=first_sentence_ended,
                **config.params,
            )
            answer, hit_limit = cut_answer(out.text, out.stats["generated_tokens"], max_new_tokens)
            if config.method == "full" and not config.params:
                full_text = answer
            stages = {key: value for key, value in out.stats.items() if key.endswith("_ms")}
            record = {
                "question_index": index,
                "kind": item.kind,
                "variant": item.variant,
                "label": config.label,
                "method": config.method,
                "keep_ratio": config.keep_ratio,
                "answer": answer,
                "gold": item.answers[0],
                "hit_limit": float(hit_limit),
                "exact_match": exact_match(answer, item.answers),
                "contains_match": contains_match(answer, item.answers),
                "f1": f1(answer, item.answers),
                "answer_logprob": out.answer_logprob,
                "answer_kept": answer_kept(spans, set(out.kept_indices)),
                "agrees_with_full": None if full_text is None else float(normalize(answer) == normalize(full_text)),
                **{key: out.stats[key] for key in STAT_KEYS},
                **stages,
                "open_ms": open_ms,
                # Opening the source (locating the caches, reading headers) is part of the wait.
                "ttft_ms": stages["ttft_ms"] + open_ms,
            }
            records.append(record)
            if on_step:
                on_step(record)
    return records


def context_pieces(engine: Engine, documents: list[DocumentKV]) -> list[str]:
    """The context's tokens decoded one by one, in prompt order."""
    return [engine.tokenizer.decode([token]) for document in documents for token in document.token_ids.tolist()]
