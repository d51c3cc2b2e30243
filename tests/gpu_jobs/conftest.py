"""What the scoring tests share: real paragraphs to score."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def paragraphs(real_docs):
    """50 real paragraphs (Paul Graham essays and Python docs), 200-600 characters each."""
    out = []
    for d in sorted(real_docs, key=lambda d: d["id"]):
        if d["source"] not in ("paul_graham", "python_docs"):
            continue
        for k, para in enumerate(p.strip() for p in d["text"].split("\n\n")):
            if 200 <= len(para) <= 600 and len(para.split()) > 30:
                out.append({"id": f"{d['id']}#{k}", "text": para})
    step = max(1, len(out) // 50)
    return out[::step][:50]
