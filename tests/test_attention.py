"""The attention entry point: SDPA against float64 softmax, each backend's sliding window, the
measured table and what ``auto`` picks from it, the cache, and (on a GPU) every installed
backend against float64, forward and backward."""

import json
import re
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch

from ivn_fast.config import Config
from ivn_fast.models import attention as A
from ivn_fast.models import attention_table as T
from ivn_fast.pretrain import main


def reference(q, k, v, window=None):
    """Plain float64 softmax attention over [B, S, H, D]."""
    q, k, v = (t.double().transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if window is not None:
        i = torch.arange(q.shape[2])[:, None]
        scores = scores.masked_fill((i - torch.arange(k.shape[2])[None, :]).abs().to(q.device) > window, -torch.inf)
    return (scores.softmax(-1) @ v).transpose(1, 2)


def rel(out, ref):
    return ((out.double() - ref).norm() / ref.norm()).item()


@pytest.fixture(autouse=True)
def restore_selection():
    yield
    A.set_backend("auto")
    A.use_table([])


def fake(name, *, scale=1.0, delay=0.0, window=True, raises=False):
    """A CPU backend: SDPA's output times `scale` (1: correct), after `delay` seconds."""

    def run(q, k, v, w, p):
        if raises:
            raise RuntimeError("no kernel for this shape\nsecond line")
        if delay:
            time.sleep(delay)
        return A.SDPA.run(q, k, v, w, p) * scale

    return A.Backend(name, f"fake {name}", run, dtypes=(torch.float32,), cuda_only=False, window=window)


@pytest.mark.parametrize("window", [None, 3])
def test_sdpa_matches_float64_softmax_forward_and_backward(window):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 13, 3, 16, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    dout = torch.randn(2, 13, 3, 16, generator=g, dtype=torch.float64)
    out = A.attention(q, k, v, window=window)
    ref = reference(q, k, v, window)
    assert rel(out, ref) < 1e-12
    got = torch.autograd.grad(out, (q, k, v), dout)
    want = torch.autograd.grad(ref, (q, k, v), dout)
    assert max(rel(a, b) for a, b in zip(got, want)) < 1e-12


def test_xformers_local_mask_is_our_window():
    xformers_bias = pytest.importorskip("xformers.ops.fmha.attn_bias")  # imports without a GPU
    for window, seq in ((0, 5), (3, 11), (64, 150)):
        ours = A.window_mask(seq, seq, window, torch.device("cpu"))
        bias = A._xformers_bias(window)
        assert isinstance(bias, xformers_bias.LocalAttentionFromBottomRightMask)
        assert torch.equal(bias.materialize((seq, seq)).exp() > 0, ours)


def test_choices_take_the_fastest_and_switch_at_geometric_midpoints():
    rows = [{"seq": 256, "window": None, "grad": True, "ms": {"sdpa": 1.0, "cudnn": 0.5, "xformers": None}},
            {"seq": 1024, "window": None, "grad": True, "ms": {"sdpa": 2.0, "cudnn": 3.0}},
            {"seq": 4096, "window": None, "grad": True, "ms": {"sdpa": 9.0, "flash_attn": 4.0}},
            {"seq": 256, "window": 64, "grad": True, "ms": {"sdpa": 1.0, "xformers": 0.9}},
            {"seq": 256, "window": None, "grad": False, "ms": {"sdpa": None}}]
    choices = A.choices_from(rows)
    full = choices[(False, True)]
    assert full.upto == (512, 2048)
    assert [full.at(s) for s in (1, 512, 513, 2048, 2049, 10**6)] == ["cudnn", "cudnn", "sdpa", "sdpa",
                                                                       "flash_attn", "flash_attn"]
    assert choices[(True, True)].at(9000) == "xformers"
    assert (False, False) not in choices  # nothing ran: no choice, so auto falls back
    assert T.describe(rows) == "full: cudnn to 512, sdpa to 2048, flash_attn above; windowed: xformers"
    one = [{"seq": s, "window": None, "grad": True, "ms": {"sdpa": 1.0}} for s in (256, 1024)]
    assert T.describe(one) == "full: sdpa"


def test_auto_follows_the_table_by_kind_and_falls_back_to_sdpa(monkeypatch):
    fast, nowin = fake("fast", scale=2.0), fake("nowin", scale=3.0, window=False)
    monkeypatch.setattr(A, "_have", {"fast": fast, "nowin": nowin, "sdpa": A.SDPA})
    A.use_table([{"seq": 64, "window": None, "grad": True, "ms": {"sdpa": 2.0, "fast": 1.0}},
                 {"seq": 64, "window": 4, "grad": True, "ms": {"sdpa": 2.0, "nowin": 1.0}}])
    q = torch.randn(1, 10, 2, 8, requires_grad=True)
    ref = A.SDPA.run(q, q, q, None, 0.0)
    assert torch.allclose(A.attention(q, q, q), 2 * ref)  # table: fast, for calls with backward
    with torch.no_grad():  # no row for forward-only calls: not fast, which the table never named
        assert torch.allclose(A.attention(q, q, q), ref)
    # the windowed row names a backend without a window: SDPA takes the call
    assert torch.allclose(A.attention(q, q, q, window=4), A.SDPA.run(q, q, q, 4, 0.0))
    qd = q.double()
    assert torch.equal(A.attention(qd, qd, qd), A.SDPA.run(qd, qd, qd, None, 0.0))  # fast takes fp32 only


def test_named_backends_need_this_machine(monkeypatch):
    with pytest.raises(ValueError, match="one of"):
        A.set_backend("flash")
    if not torch.cuda.is_available():
        for name in ("flash_attn", "xformers", "flex", "cudnn"):
            with pytest.raises(ValueError, match="needs a CUDA device"):
                A.set_backend(name)
    assert T.configure("sdpa", torch.device("cpu")) == "attention sdpa: SDPA"
    assert T.configure("auto", torch.device("cpu")) == "attention auto: SDPA"
    monkeypatch.setattr(A, "_unavailable", {"xformers": "xformers.ops failed to import (ImportError: x)"})
    assert T.configure("auto", torch.device("cpu")) == \
        "attention auto: SDPA; left out: xformers.ops failed to import (ImportError: x)"
    q = torch.randn(1, 5, 1, 4)
    with pytest.raises(ValueError, match="as many queries as keys, got 5 and 4"):
        A.attention(q, q[:, :4], q[:, :4], window=2)
    assert A.BACKENDS == tuple(Config().train.__dataclass_fields__["attention"].metadata["choices"])


def test_pretrain_refuses_a_backend_it_cannot_run(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU may run every backend")
    assert main(["--train.attention", "xformers", "--max-steps", "1", "--output_dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["ivn_fast.pretrain: error: attention backend 'xformers' requested but it needs a CUDA device"]


def test_measure_times_drops_wrong_and_failing_backends_and_picks():
    backends = {"sdpa": A.SDPA, "slow": fake("slow", delay=0.05), "wrong": fake("wrong", scale=1.5),
                "broken": fake("broken", raises=True), "nowin": fake("nowin", window=False)}
    rows = T.measure((16, 32), ((None, True), (4, True)), backends=backends, heads=2, head_dim=8,
                     dtype=torch.float32, tokens=64, reps=2, device="cpu")
    assert [(r["seq"], r["window"], r["batch"]) for r in rows] == [(16, None, 4), (32, None, 2), (16, 4, 4), (32, 4, 2)]
    for r in rows:
        assert r["ms"]["slow"] >= 50 and r["ms"]["sdpa"] > 0
        assert r["ms"]["wrong"] is None and "disagrees with float32 SDPA" in r["errors"]["wrong"]
        assert r["errors"]["broken"] == "RuntimeError: no kernel for this shape"
        assert ("nowin" in r["ms"]) == (r["window"] is None)  # never asked for what it cannot take
    picked = {name for c in A.choices_from(rows).values() for name in c.names}
    assert picked.isdisjoint({"wrong", "broken"})  # left out of the rows, so never picked


def test_table_is_cached_and_a_damaged_cache_is_measured_again(tmp_path):
    path = tmp_path / "attention" / "dev.json"
    calls = []

    def measure_fn():
        calls.append(1)
        return [{"seq": 8, "window": None, "grad": True, "ms": {"sdpa": 1.0}}]

    rows, cached = T.load_or_measure(path, measure_fn)
    assert not cached and json.loads(path.read_text())["rows"] == rows
    assert T.load_or_measure(path, measure_fn) == (rows, True) and len(calls) == 1
    path.write_text('{"rows": [')  # a crash mid-write elsewhere, or a hand edit
    assert T.load_or_measure(path, measure_fn) == (rows, False) and len(calls) == 2


def test_auto_dispatch_compiles_without_graph_breaks(monkeypatch):
    monkeypatch.setattr(A, "_have", {"fast": fake("fast", scale=2.0), "sdpa": A.SDPA})
    A.use_table([{"seq": 64, "window": None, "grad": True, "ms": {"sdpa": 2.0, "fast": 1.0}}])
    q = torch.randn(1, 10, 2, 8, requires_grad=True)
    f = torch.compile(lambda q: A.attention(q, q, q), fullgraph=True, backend="eager")
    assert torch.allclose(f(q), 2 * A.SDPA.run(q, q, q, None, 0.0))


GPU_BACKENDS = sorted(A.installed()) if torch.cuda.is_available() else []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU backends run on CUDA only")
@pytest.mark.parametrize("window", [None, 64])
@pytest.mark.parametrize("shape", [(2, 333, 4, 64), (1, 1030, 16, 64)], ids=["S333", "S1030"])
@pytest.mark.parametrize("name", GPU_BACKENDS)
def test_gpu_backend_matches_float64(name, shape, window):
    backend = A.installed()[name]
    b, s, h, d = shape
    qkv = torch.randn(b, s, 3, h, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    q, k, v = qkv.unbind(2)  # strided views, as the fused projection gives them
    if not backend.takes(q, window, 0.0):
        pytest.skip(f"{name} does not take a window")
    dout = torch.randn_like(q)
    out = backend.run(q, k, v, window, 0.0)
    ref_in = qkv.detach().double().requires_grad_()
    ref = reference(*ref_in.unbind(2), window)
    assert rel(out, ref) < 1e-2
    (got,) = torch.autograd.grad(out, qkv, dout)
    (want,) = torch.autograd.grad(ref, ref_in, dout.double())
    assert rel(got, want) < 1e-2


class FakeFA4(torch.autograd.Function):
    """Shaped like FA4's public function: an autograd function returning (out, lse), its
    backward hand-written (no autograd recording inside)."""

    @staticmethod
    def forward(ctx, q, k, v, window):
        ctx.save_for_backward(q, k, v)
        ctx.window = window
        with torch.no_grad():
            return A.SDPA.run(q, k, v, window, 0.0), q.new_zeros(q.shape[0], q.shape[2], q.shape[1])

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v = (t.double().transpose(1, 2) for t in ctx.saved_tensors)
        scale = q.shape[-1] ** -0.5
        scores = q @ k.transpose(-1, -2) * scale
        if ctx.window is not None:
            scores = scores.masked_fill(~A.window_mask(q.shape[2], k.shape[2], ctx.window, q.device), -torch.inf)
        p = scores.softmax(-1)
        do = dout.double().transpose(1, 2)
        dp = do @ v.transpose(-1, -2)
        ds = p * (dp - (dp * p).sum(-1, keepdim=True)) * scale
        grads = (ds @ k, ds.transpose(-1, -2) @ q, p.transpose(-1, -2) @ do)
        return (*(g.transpose(1, 2).to(dout.dtype) for g in grads), None)


def fake_fa4(q, k, v, window_size=(None, None)):
    assert window_size[0] == window_size[1]
    return FakeFA4.apply(q, k, v, window_size[0])


@pytest.mark.parametrize("window", [None, 3])
def test_fa4_custom_op_matches_sdpa_and_compiles_whole(monkeypatch, window):
    monkeypatch.setattr(A, "_fa4", fake_fa4)
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 11, 3, 8, generator=g, requires_grad=True) for _ in range(3))
    dout = torch.randn(2, 11, 3, 8, generator=g)
    out = A._flash4(q, k, v, window, 0.0)
    ref = reference(q, k, v, window)
    assert rel(out, ref) < 1e-6
    got = torch.autograd.grad(out, (q, k, v), dout)
    want = torch.autograd.grad(ref, (q, k, v), dout.double())
    assert max(rel(a, b) for a, b in zip(got, want)) < 1e-6
    compiled = torch.compile(lambda q, k, v: A._flash4(q, k, v, window, 0.0), fullgraph=True, backend="aot_eager")
    assert torch.allclose(compiled(q, k, v), out)
    torch.library.opcheck(A._flash4_fwd, (q, k, v, window))


def test_a_table_pick_that_is_gone_goes_to_sdpa_not_the_fixed_order(monkeypatch):
    monkeypatch.setattr(A, "_have", {"flash_attn": fake("flash_attn", scale=2.0), "sdpa": A.SDPA})
    q = torch.randn(1, 10, 2, 8, requires_grad=True)
    ref = A.SDPA.run(q, q, q, None, 0.0)
    assert torch.allclose(A.attention(q, q, q), 2 * ref)  # no table: flash_attn first
    A.use_table([{"seq": 64, "window": None, "grad": True, "ms": {"sdpa": 2.0, "xformers": 1.0}}])
    assert torch.allclose(A.attention(q, q, q), ref)  # the table ruled on this kind: its pick, else SDPA


def test_a_broken_library_reads_as_broken_not_missing(tmp_path, monkeypatch):
    (tmp_path / "broken_attn_lib.py").write_text("raise RuntimeError('built for another CUDA')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(A, "_unavailable", {})
    assert A._load("xformers", "broken_attn_lib", "f") is None
    assert A._unavailable == {"xformers": "broken_attn_lib failed to import (RuntimeError: built for another CUDA)"}
    assert A._load("flash_attn", "no_such_attn_lib.sub", "f") is None
    assert "flash_attn" not in A._unavailable  # not installed is not an error


def test_xformers_built_for_another_torch_is_left_out_with_the_reason(monkeypatch):
    """Such a wheel imports (with a warning) and then has no kernel for any call."""
    class Failed(Exception):
        def __str__(self) -> str:
            return ("xFormers can't load C++/CUDA extensions. xFormers was built for:\n    PyTorch 2.10.0+cu128 "
                    "(you have 2.11.0+cu130)\n  Please reinstall xformers\n  Memory-efficient attention ...")

    ops, lib = types.ModuleType("xformers.ops"), types.ModuleType("xformers._cpp_lib")
    ops.memory_efficient_attention = lambda *a, **k: None
    lib._cpp_library_load_exception = None
    monkeypatch.setitem(sys.modules, "xformers", types.ModuleType("xformers"))
    monkeypatch.setitem(sys.modules, "xformers.ops", ops)
    monkeypatch.setitem(sys.modules, "xformers._cpp_lib", lib)
    monkeypatch.setattr(A, "_unavailable", {})
    assert A._xformers_backend().name == "xformers"
    lib._cpp_library_load_exception = Failed()
    assert A._xformers_backend() is None
    assert A._unavailable == {"xformers": "xformers' C++/CUDA kernels did not load (xFormers was built for: "
                                          "PyTorch 2.10.0+cu128 (you have 2.11.0+cu130))"}


def test_a_table_with_an_out_of_memory_row_is_not_cached(tmp_path):
    path = tmp_path / "t.json"
    rows = [{"seq": 8, "window": None, "grad": True, "ms": {"sdpa": 1.0, "cudnn": None},
             "errors": {"cudnn": "OutOfMemoryError: CUDA out of memory"}}]
    assert T.load_or_measure(path, lambda: rows) == (rows, False)
    assert not path.exists()


def test_bench_attention_cpu_smoke(tmp_path):
    """bench.attention runs end to end and records what a GPU run records."""
    out = tmp_path / "attention.json"
    proc = subprocess.run([sys.executable, "-m", "bench.attention", "--cpu-smoke", "--json", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["command"] == f"python -m bench.attention --cpu-smoke --json {out}"
    assert [(r["seq"], r["window"], r["grad"]) for r in result["rows"]] == [
        (32, None, True), (64, None, True), (32, None, False), (64, None, False), (32, 8, True), (64, 8, True)]
    assert all(r["ms"]["sdpa"] > 0 and not r["errors"] for r in result["rows"])
    assert "windowed 8, fwd+bwd" in proc.stdout
    assert len(re.findall(r"\d\.\d{3}\* ", proc.stdout)) == 6  # auto's pick marked in every row


def test_flex_band_matches_the_dense_window_and_is_built_once():
    """FlexAttention's block-sparse band against float64 (forward: FlexAttention has no backward
    on CPU; the GPU test covers it)."""
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 300, 2, 16, generator=g) for _ in range(3))
    A._bands.clear()
    for window in (3, 64):
        assert rel(A._flex(q, k, v, window, 0.0), reference(q, k, v, window)) < 1e-5
    mask = A._bands[(300, 3, "cpu")]
    A._flex(q, k, v, 3, 0.0)
    assert A._bands[(300, 3, "cpu")] is mask and len(A._bands) == 2
    backend = A.Backend("flex", "", A._flex, dtypes=(torch.float32,), cuda_only=False, full=False)
    assert backend.takes(q, 64, 0.0) and not backend.takes(q, None, 0.0)  # windows only


def test_configure_on_a_gpu_measures_once_shares_and_then_reads_the_cache(tmp_path, monkeypatch):
    """The GPU branch of configure, with the device queries and the timing stood in for."""
    monkeypatch.setenv("IVN_FAST_CACHE", str(tmp_path))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU 80GB")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 91000)
    rows = [{"seq": 1024, "window": None, "grad": True, "ms": {"sdpa": 2.0, "cudnn": 1.0}, "errors": {}}]
    calls, shared = [], []
    monkeypatch.setattr(T, "measure", lambda: calls.append(1) or rows)
    cuda = torch.device("cuda")

    def share(r):
        shared.append(r)
        return r

    first = T.configure("auto", cuda, share=share)
    assert first.startswith("attention auto (measured in ") and first.endswith("full: cudnn")
    assert shared == [rows] and len(calls) == 1
    second = T.configure("auto", cuda, share=share)
    assert second.startswith(f"attention auto (cached, {tmp_path / 'attention'}/Fake-GPU-80GB-")
    assert len(calls) == 1 and shared[-1] == rows
    assert A._choices[(False, True)].at(1024) == "cudnn"
    assert T.configure("auto", cuda, is_main=False, share=lambda r: r or rows).endswith("full: cudnn")
