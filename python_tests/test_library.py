"""Registration: schemas, opcheck, torch.compile, and the reference fallback."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import adapttoken_ext
from adapttoken_ext import _library, ops


def _opcheck_cases():
    q = torch.randn(1, 4, 6, 16)
    k = torch.randn(1, 2, 30, 16)
    return {
        "attention_scores": (q, k, 2, 3, 28, 0.25, "max"),
        "segmented_topk": (torch.randn(20), torch.tensor([0, 5, 5, 20]),
                           torch.tensor([2, 0, 15]), True),
        "softmax_entropy": (torch.randn(3, 50), torch.tensor([1, 4, 9]), 0.7),
        "select": (q, k, 2, torch.tensor([3, 10, 24]), torch.tensor([4, 6]), 0.25, "mean"),
        "local_entropy": (torch.randn(2, 3, 4, 16), 3, 0.2),
    }


def test_backend_is_reported():
    assert adapttoken_ext.backend in ("extension", "reference")
    if os.environ.get("ADAPTTOKEN_ALLOW_REFERENCE") != "1":  # conftest stops otherwise
        assert adapttoken_ext.backend == "extension", adapttoken_ext.load_error


@pytest.mark.parametrize("name", list(_library.SCHEMAS))
def test_schema_matches_python_copy(name):
    registered = str(getattr(torch.ops.adapttoken, name).default._schema)
    expected = str(torch._C.parse_schema("adapttoken::" + _library.SCHEMAS[name]))
    assert registered == expected


@pytest.mark.parametrize("name", list(_library.SCHEMAS))
def test_opcheck(name):
    torch.library.opcheck(getattr(torch.ops.adapttoken, name).default, _opcheck_cases()[name])


def test_torch_compile_fullgraph():
    q = torch.randn(1, 4, 6, 16)
    k = torch.randn(1, 2, 40, 16)
    offsets = torch.tensor([3, 20, 30])
    budgets = torch.tensor([5, 2])
    logits = torch.randn(2, 100)
    index = torch.tensor([1, 5, 7])

    def f(q, k, offsets, budgets, logits, index):
        s = ops.attention_scores(q, k, 2, 3, 30)
        h = ops.softmax_entropy(logits, index, 0.5)
        i, v = ops.select(q, k, 2, offsets, budgets, reduce="mean")
        tv, ti = ops.segmented_topk(s[0], offsets - offsets[0], budgets)
        return s * 2, h + 1, i, v, tv, ti

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(q, k, offsets, budgets, logits, index),
                         f(q, k, offsets, budgets, logits, index)):
        torch.testing.assert_close(got, want)


def _run_python(*parts: str, **env) -> subprocess.CompletedProcess:
    code = "".join(textwrap.dedent(p) for p in parts)
    return subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=300)


CHECK_OPS = """
    import torch
    from adapttoken_ext import ops, reference
    q, k = torch.randn(1, 4, 6, 16), torch.randn(1, 2, 30, 16)
    assert torch.allclose(ops.attention_scores(q, k, 2, 3, 28),
                          reference.attention_scores(q, k, 2, 3, 28, 0.25))
    idx, _ = ops.select(q, k, 2, torch.tensor([3, 10, 24]), torch.tensor([4, 6]))
    assert idx.shape == (10,)
"""


def test_disable_ext_uses_reference_silently():
    r = _run_python("""
        import warnings
        warnings.simplefilter("error")
        import adapttoken_ext
        assert adapttoken_ext.backend == "reference", adapttoken_ext.backend
    """, CHECK_OPS, ADAPTTOKEN_DISABLE_EXT="1")
    assert r.returncode == 0, r.stderr


def test_missing_extension_warns_and_falls_back():
    r = _run_python("""
        import importlib.util, warnings
        find_spec = importlib.util.find_spec
        importlib.util.find_spec = lambda name, *a: (
            None if name == "adapttoken_ext._C" else find_spec(name, *a))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import adapttoken_ext
        assert adapttoken_ext.backend == "reference"
        assert any("reference ops" in str(w.message) for w in caught), caught
    """, CHECK_OPS, ADAPTTOKEN_DISABLE_EXT="0")
    assert r.returncode == 0, r.stderr
