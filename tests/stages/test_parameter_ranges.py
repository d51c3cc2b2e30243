"""Parameters that validated and then failed after the work, or lied (issue 32, point 16): each is
refused by `longforge validate`, naming the key, before a run starts. The shipped pipeline files,
with one value changed each."""

from __future__ import annotations

import pytest

from tests.conftest import REPO, run_cli

CASES = {
    # name: (pipeline, text in it, replaced by, words of the refusal)
    "decompose min_exp above max_exp": ("decomposition", "min_exp: 8, max_exp: 13, plus_one", "min_exp: 8, max_exp: 0, "
                                        "plus_one", "must not exceed max_exp"),
    "schedule cycles 1e15": ("decomposition", "cycles: 8,", "cycles: 1000000000000000,", "cycles"),
    "schedule max_exp 1e15": ("decomposition", "budget_tokens: 8192, min_exp: 8, max_exp: 13",
                              "budget_tokens: 8192, min_exp: 8, max_exp: 1000000000000000", "max_exp"),
    "schedule min_exp above max_exp": ("decomposition", "budget_tokens: 8192, min_exp: 8, max_exp: 13",
                                       "budget_tokens: 8192, min_exp: 13, max_exp: 8", "no bucket"),
    "schedule custom odds of the wrong length": ("decomposition", "curriculum: grow_p2,",
                                                 "curriculum: custom, odds: [1, 2],", "custom odds"),
    "text_hacks length 1e12": ("indonesian-hack", "lengths: [512, 256, 128]", "lengths: [512, 1000000000000]",
                               "from 3 to 1,000,000"),
    "licon orders repeated": ("licon", "orders: [scattered, grouped, shuffled]", "orders: [scattered, scattered]",
                              "each at most once"),
    "a tokenizer that is /etc/passwd": ("decomposition", "tokenizer: smollm2, append_eos", "tokenizer: /etc/passwd, "
                                       "append_eos", "is not a tokenizer.json"),
    "a tokenizer that is not there": ("indonesian-hack", "tokenizer: minilm", "tokenizer: /no/such/tokenizer.json",
                                      "neither a known name"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_an_absurd_parameter_is_refused_while_validating(tmp_path, case):
    pipeline, old, new, said = CASES[case]
    text = (REPO / "pipelines" / f"{pipeline}.yaml").read_text()
    assert old in text, old
    path = tmp_path / f"{pipeline}.yaml"
    path.write_text(text.replace(old, new))
    r = run_cli("validate", str(path))
    assert r.returncode == 2 and said in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert f"{path}:" in r.stderr  # the file and line of the value


def test_the_shipped_files_validate(tmp_path):
    for pipeline in ("decomposition", "indonesian-hack", "licon"):
        r = run_cli("validate", str(REPO / "pipelines" / f"{pipeline}.yaml"))
        assert r.returncode == 0, r.stderr
