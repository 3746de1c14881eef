"""The prefill wrappers' CUDA-graph bookkeeping, on the CPU: the wrapper's side of graph mode
(limits from FlashInfer's fixed buffers, the first plan's query rows and kind, buffers filled
only after the native op accepted a plan, a refused plan changing nothing) with the native CUDA
op replaced by a recorder. No device runs here: ``test_cuda.py`` runs the real op; this checks
the Python logic that decides what the real op is asked to do, which CI can run.
"""

import numpy as np
import pytest

import ferrinfer
from ferrinfer import prefill as prefill_mod


class FakeOp:
    """Records the native op's construction and plans; refuses a plan when told to."""

    made = []

    def __init__(self, device, hq, hkv, d, dtype, causal, *options, rope=None, kv_dtype=None, graph=None):
        self.graph = graph
        self.causal = causal
        self.plans = []
        self.refuse = False
        FakeOp.made.append(self)

    def plan_paged(self, stream, ws, qo_indptr, indptr, indices, last, page_size, mask):
        if self.refuse:
            raise ValueError("native refusal")
        self.plans.append((np.array(qo_indptr), mask))


@pytest.fixture
def wrapper(monkeypatch):
    """A paged wrapper in graph mode that believes it is on CUDA device 0."""
    FakeOp.made = []
    monkeypatch.setattr(prefill_mod._cuda, "device_of", lambda x: 0 if x is not None else None)
    monkeypatch.setattr(prefill_mod._cuda, "stream", lambda dev: 0)
    monkeypatch.setattr(prefill_mod._cuda, "workspace", lambda buf: (1 << 20, 1 << 20, 0, buf))
    monkeypatch.setattr(prefill_mod._native, "CudaBatchPrefill", FakeOp)
    monkeypatch.setattr(prefill_mod, "view", lambda x, name: x)
    bufs = dict(qo_indptr_buf=np.full(5, -1, np.int32), paged_kv_indptr_buf=np.full(5, -1, np.int32),
                paged_kv_indices_buf=np.full(16, -1, np.int32), paged_kv_last_page_len_buf=np.full(4, -1, np.int32),
                custom_mask_buf=np.zeros(64, np.uint8), mask_indptr_buf=np.full(5, -1, np.int32))
    w = ferrinfer.BatchPrefillWithPagedKVCacheWrapper(object(), use_cuda_graph=True, **bufs)
    return w, bufs


def plan(w, qo_lens, kv_lens, mask=None, causal=False):
    ps = 16
    pages = [(n + ps - 1) // ps for n in kv_lens]
    indptr = np.concatenate([[0], np.cumsum(pages)]).astype(np.int32)
    indices = np.arange(indptr[-1], dtype=np.int32)
    last = np.array([(n - 1) % ps + 1 for n in kv_lens], np.int32)
    qo = np.concatenate([[0], np.cumsum(qo_lens)]).astype(np.int32)
    w.plan(qo, indptr, indices, last, 4, 2, 64, ps, causal=causal, custom_mask=mask)
    return qo, indices


def test_limits_come_from_the_buffers_and_the_first_plan(wrapper):
    w, bufs = wrapper
    qo, indices = plan(w, [5, 3], [20, 40])
    op = FakeOp.made[-1]
    # (max_batch, max_qo_tokens: the first plan's rows, max_pages, max_mask_bytes)
    assert op.graph == (4, 8, 16, 64)
    assert np.array_equal(bufs["qo_indptr_buf"][:3], qo)
    assert np.array_equal(bufs["paged_kv_indices_buf"][: indices.size], indices)
    # A later, smaller step: the same op, re-planned; the buffers hold its tables.
    qo, indices = plan(w, [2], [70])
    assert len(FakeOp.made) == 1 and len(op.plans) == 2
    assert np.array_equal(bufs["qo_indptr_buf"][:2], qo)
    assert np.array_equal(bufs["paged_kv_indices_buf"][: indices.size], indices)


def test_refused_plans_change_nothing(wrapper):
    w, bufs = wrapper
    plan(w, [5, 3], [20, 40])
    first_plan, snapshot = w._plan, {k: v.copy() for k, v in bufs.items()}
    op = FakeOp.made[-1]
    with pytest.raises(ValueError, match="query rows"):
        plan(w, [9], [20])
    with pytest.raises(ValueError, match="custom mask"):
        plan(w, [2], [8], mask=np.ones(16, bool))
    with pytest.raises(ValueError, match="causal"):
        plan(w, [2], [8], causal=True)
    with pytest.raises(ValueError, match="buffer holds"):
        plan(w, [1, 1, 1, 1], [300, 1, 1, 1])  # 22 pages > the 16-entry indices buffer
    op.refuse = True
    with pytest.raises(ValueError, match="native refusal"):
        plan(w, [2], [8])
    assert w._plan is first_plan
    assert w._graph_rows == 8
    for k, v in bufs.items():
        assert np.array_equal(v, snapshot[k]), f"{k} was written by a refused plan"


def test_the_first_plan_fixes_masked_plans(wrapper):
    w, bufs = wrapper
    mask = np.zeros(3 * 20 + 2 * 9, bool)
    mask[::3] = True
    plan(w, [3, 2], [20, 9], mask=mask)
    bits, offsets = FakeOp.made[-1].plans[-1][1]
    assert np.array_equal(bufs["custom_mask_buf"][: len(bits)], np.frombuffer(bits, np.uint8))
    assert np.array_equal(bufs["mask_indptr_buf"][: len(offsets)], offsets)
    with pytest.raises(ValueError, match="custom mask"):
        plan(w, [1], [8])
    # Too many mask bytes for custom_mask_buf (64): refused before the native op sees it.
    with pytest.raises(ValueError, match="custom_mask has"):
        plan(w, [4], [200], mask=np.ones(800, bool))
    assert len(FakeOp.made[-1].plans) == 1


def test_graph_mode_needs_its_buffers(monkeypatch):
    monkeypatch.setattr(prefill_mod._cuda, "device_of", lambda x: 0 if x is not None else None)
    with pytest.raises(ValueError, match="qo_indptr_buf"):
        ferrinfer.BatchPrefillWithRaggedKVCacheWrapper(object(), use_cuda_graph=True)
    with pytest.raises(ValueError, match="go together"):
        ferrinfer.BatchPrefillWithRaggedKVCacheWrapper(object(), use_cuda_graph=True, qo_indptr_buf=np.zeros(3),
                                                       kv_indptr_buf=np.zeros(3), custom_mask_buf=np.zeros(8))
