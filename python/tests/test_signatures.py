"""ferrinfer's wrappers against FlashInfer's own signatures (on a machine where ``import
flashinfer`` works, e.g. the GPU machine with FlashInfer 0.7.2; skipped elsewhere).

Every parameter of ours must be one of FlashInfer's, in FlashInfer's order, so positional and
keyword calls written for FlashInfer mean the same here. Parameters FlashInfer has and we do
not are printed (a call using one gets Python's TypeError naming it)."""

import inspect

import pytest

import ferrinfer

flashinfer = pytest.importorskip("flashinfer", reason="flashinfer is not importable here")

FUNCTIONS = [
    "single_decode_with_kv_cache",
    "single_prefill_with_kv_cache",
    "append_paged_kv_cache",
    "merge_state",
    "merge_state_in_place",
    "merge_states",
    "get_seq_lens",
    "get_batch_indices_positions",
]
METHODS = [
    ("BatchDecodeWithPagedKVCacheWrapper", ["__init__", "plan", "run"]),
    ("CUDAGraphBatchDecodeWithPagedKVCacheWrapper", ["__init__"]),
    ("BatchPrefillWithPagedKVCacheWrapper", ["__init__", "plan", "run"]),
    ("BatchPrefillWithRaggedKVCacheWrapper", ["__init__", "plan", "run"]),
]


def params(f):
    return [p for p in inspect.signature(f).parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def takes_kwargs(f):
    return any(p.kind == p.VAR_KEYWORD for p in inspect.signature(f).parameters.values())


def positional(ps):
    return [p.name for p in ps if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def compare(name, ours, theirs):
    o, t = params(ours), params(theirs)
    tnames = [p.name for p in t]
    unknown = [p.name for p in o if p.name not in tnames]
    # FlashInfer's own **kwargs (its decode plan forwards them) accepts any name.
    assert takes_kwargs(theirs) or not unknown, f"{name}: parameters not in FlashInfer's signature: {unknown}"
    op, tp = positional(o), positional(t)
    n = min(len(op), len(tp))
    assert op[:n] == tp[:n], f"{name}: positional parameters differ: ours {op}, FlashInfer's {tp}"
    extra = [n for n in tnames if n not in {p.name for p in o}]
    if extra:
        # Accepted through **kwargs: FlashInfer's neutral values pass, others raise
        # NotImplementedError naming the argument.
        assert takes_kwargs(ours), f"{name}: FlashInfer parameters {extra} would be a TypeError"
        print(f"{name}: FlashInfer parameters taken through **kwargs: {extra}")


@pytest.mark.parametrize("name", FUNCTIONS)
def test_function_signatures(name):
    theirs = getattr(flashinfer, name, None)
    if theirs is None:
        pytest.skip(f"flashinfer has no {name}")
    compare(name, getattr(ferrinfer, name), theirs)


@pytest.mark.parametrize("cls,methods", METHODS, ids=[c for c, _ in METHODS])
def test_wrapper_signatures(cls, methods):
    theirs = getattr(flashinfer, cls, None)
    if theirs is None:
        pytest.skip(f"flashinfer has no {cls}")
    for m in methods:
        compare(f"{cls}.{m}", getattr(getattr(ferrinfer, cls), m), getattr(theirs, m))
