"""tools/personal_answers.py: each user's own recommender answer among other users', ranked by a model in chat."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from tool_modules import load_tool


@pytest.fixture(scope="module")
def tool():
    return load_tool("personal_answers")


@pytest.fixture(scope="module")
def spread_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 users over 16 items, each user walking the items with its own stride: many distinct answers."""
    from test_finetune import _CORPUS

    out = tmp_path_factory.mktemp("spread-data")
    words = " ".join(_CORPUS).split()
    items = [{"item_id": 200 + i, "title": " ".join(words[2 * i : 2 * i + 2])} for i in range(16)]
    (out / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    rows = ["user_id\titem_id\ttimestamp"]
    for user in range(30):
        seq = [(user + k * (1 + user % 5)) % 16 for k in range(7)]
        seq = list(dict.fromkeys(seq)) + [i for i in range(16) if i not in seq][: 7 - len(set(seq))]
        rows += [f"{user}\t{200 + i}\t{1000 + n}" for n, i in enumerate(seq)]
    (out / "interactions.tsv").write_text("\n".join(rows) + "\n")
    return out


def test_each_case_puts_the_users_own_answer_first_among_other_users_answers(tool, spread_data: Path) -> None:
    from ollama_slim.recsys.data import load_dataset
    from ollama_slim.recsys.neighbours import ItemNeighbours
    from ollama_slim.slimming.finetune.data import cf_answer_items

    dataset = load_dataset(str(spread_data))
    cases, own = tool.personal_cases(dataset, users=20, history=3, vocab=0, others=3, seed=0)
    neighbours = ItemNeighbours(dataset)
    assert len(cases) == 20 and own == [cf_answer_items(neighbours, dataset, c.example, 1)[0] for c in cases]
    for case, answer in zip(cases, own):
        assert case.candidates[0] == answer and len(set(case.candidates)) == 4
        assert set(case.candidates[1:]) <= set(own) and not set(case.candidates[1:]) & set(case.example.history)
    again, _ = tool.personal_cases(dataset, users=20, history=3, vocab=0, others=3, seed=0)
    assert again == cases  # seeded: the same candidates for every model
    with pytest.raises(click.UsageError, match="too few for 1\\+50 candidates"):
        tool.personal_cases(dataset, users=20, history=3, vocab=0, others=50, seed=0)


def test_the_tool_ranks_with_a_model_and_prints_json(tool, spread_data: Path, tiny_llama: Path) -> None:
    result = CliRunner().invoke(tool.main, [str(tiny_llama), "--data", str(spread_data), "--users", "20", "--history", "3", "--others", "3",
                                            "--cf-vocab", "0"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    row = out["models"][0]
    assert row["model"] == str(tiny_llama) and 0.0 <= row["ndcg@10"]["low"] <= row["ndcg@10"]["mean"] <= row["ndcg@10"]["high"] <= 1.0
    assert 1.0 <= row["mean_rank"] <= 4.0 and 0.0 <= row["top1"] <= 1.0
    assert abs(out["chance_ndcg@10"] - 0.6404) < 1e-3  # four candidates: (1 + 1/log2 3 + 1/log2 4 + 1/log2 5) / 4
    assert 0.0 < out["recommender_distinct"] <= 1.0
