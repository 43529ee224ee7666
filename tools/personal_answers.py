"""Has a healed model learnt which history leads to which answer?

    python tools/personal_answers.py MODEL [MODEL ...] [--data movielens-100k] [--users 100] [--cf-vocab 100]

The item-to-item recommender that `finetune --cf-answers` distils (recsys.neighbours, with
`--cf-vocab`) gives each test user's history one answer. Each model ranks, in the chat
prompt `ollama run` sends (its chat template, the Modelfile's SYSTEM, the history as the user's
message), that user's answer among 19 (`--others`) the recommender gives other test users' histories
(length-normalised log-likelihood, as every ranking here). A model that answers the same for
every history ranks them at chance (NDCG@10 0.227); one that has learnt the mapping ranks its own
history's answer first. Beside it: how many distinct answers the recommender gives these users,
the most a model imitating it could reach in `eval --mode generate`.

Same seeded test users as `eval --users N`; other users' answers drawn with a fixed seed.
Prints JSON on stdout and a table on stderr.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ollama_slim.ollama.modelfile import chat_prompt_of  # noqa: E402
from ollama_slim.recsys.data import examples, load_dataset, select_users  # noqa: E402
from ollama_slim.recsys.evaluate import Case, EvalConfig, score_cases  # noqa: E402
from ollama_slim.recsys.metrics import bootstrap_interval, per_user_metrics, random_baseline  # noqa: E402
from ollama_slim.recsys.neighbours import ItemNeighbours  # noqa: E402
from ollama_slim.recsys.scorers import make_scorer  # noqa: E402
from ollama_slim.slimming.finetune.data import cf_answer_items  # noqa: E402


def personal_cases(dataset, *, users: int, history: int, vocab: int, others: int, seed: int) -> tuple[list[Case], list[int]]:
    """Each test user's example with candidates (own answer, then ``others`` answers of other
    users, never one of the user's history), and every user's own answer."""
    tests = examples(dataset, split="test", history=history, users=select_users(dataset, users, seed=seed))
    neighbours = ItemNeighbours(dataset, vocab=vocab)
    own = [cf_answer_items(neighbours, dataset, e, 1)[0] for e in tests]
    pool = list(dict.fromkeys(own))
    rng = np.random.default_rng(seed)
    cases = []
    for example, answer in zip(tests, own):
        choices = [a for a in pool if a != answer and a not in example.history]
        if len(choices) < others:
            raise click.UsageError(f"the recommender's answers to {users} users leave {len(choices)} outside user {example.user}'s own answer and history: "
                                   f"too few for 1+{others} candidates; use more --users or fewer --others")
        picked = rng.choice(len(choices), size=others, replace=False)
        cases.append(Case(example, (answer, *(choices[i] for i in sorted(picked)))))
    return cases, own


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("models", nargs=-1, required=True)
@click.option("--data", default="movielens-100k", show_default=True)
@click.option("--users", default=100, show_default=True, help="Seeded test users (those `eval --users N` ranks).")
@click.option("--cf-vocab", default=100, show_default=True, help="The recommender's answers come from the N most taken train items (0: any).")
@click.option("--history", default=5, show_default=True)
@click.option("--title-words", default=10, show_default=True)
@click.option("--others", default=19, show_default=True, help="Other users' answers beside each user's own.")
@click.option("--seed", default=0, show_default=True)
def main(models: tuple[str, ...], data: str, users: int, cf_vocab: int, history: int, title_words: int, others: int, seed: int) -> None:
    dataset = load_dataset(data)
    cases, own = personal_cases(dataset, users=users, history=history, vocab=cf_vocab, others=others, seed=seed)
    config = EvalConfig(data=data, users=users, history=history, title_words=title_words, seed=seed, task_format="chat")
    rows = []
    for model in models:
        scorer = make_scorer(model)
        scores, _ = score_cases(scorer, dataset, cases, config, prompt=config.prompt_config(chat_prompt_of(model, seed=seed)))
        metrics = per_user_metrics(scores)
        rows.append({"model": model, "ndcg@10": bootstrap_interval(metrics["ndcg@10"]).to_json(),
                     "top1": float(np.mean(metrics["rank"] == 1.0)), "mean_rank": float(metrics["rank"].mean())})
    chance = random_baseline(others + 1)["ndcg@10"]
    result = {"data": data, "users": users, "cf_vocab": cf_vocab, "history": history, "title_words": title_words, "others": others, "seed": seed,
              "recommender_distinct": len(set(own)) / len(own), "chance_ndcg@10": chance, "models": rows}
    print(json.dumps(result, indent=2))
    click.echo(f"own history's recommender answer among {others} other users' ({data}, {users} test users, --cf-vocab {cf_vocab}; "
               f"the recommender's answers distinct for {result['recommender_distinct']:.2f}; chance NDCG@10 {chance:.3f})", err=True)
    click.echo(f"{'model':48s} {'NDCG@10':>22s} {'top 1':>6s} {'mean rank':>9s}", err=True)
    for row in rows:
        n = row["ndcg@10"]
        click.echo(f"{row['model'][-48:]:48s} {n['mean']:.3f} [{n['low']:.3f}, {n['high']:.3f}] {row['top1']:6.2f} {row['mean_rank']:9.2f}", err=True)


if __name__ == "__main__":
    main()
