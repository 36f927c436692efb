"""lm-evaluation-harness `local-completions` against the real server: a multiple-choice task
from a local file scores the same as the loglikelihoods computed in-process with transformers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

lm_eval = pytest.importorskip("lm_eval")  # requirements-dev.txt

pytestmark = [pytest.mark.server, pytest.mark.slow]

DATA = Path(__file__).parent / "data" / "mc_tiny.jsonl"
TASK = """task: mmserve_mc_tiny
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
target_delimiter: " "
metric_list:
  - metric: acc
"""


def in_process(path: Path, docs: list[dict]) -> tuple[float, list[list[float]]]:
    """Accuracy and every choice's loglikelihood, lm-eval's way: the continuation is the
    tokens of `context + " " + choice` after those of the context."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    scores, right = [], 0
    for doc in docs:
        context = tok(doc["question"], add_special_tokens=False).input_ids
        row = []
        for choice in doc["choices"]:
            whole = tok(doc["question"] + " " + choice, add_special_tokens=False).input_ids
            with torch.inference_mode():
                logits = model(torch.tensor([whole])).logits[0].float()
            logp = torch.log_softmax(logits, -1)
            row.append(sum(float(logp[i - 1, whole[i]]) for i in range(len(context), len(whole))))
        scores.append(row)
        right += max(range(len(row)), key=row.__getitem__) == doc["answer"]
    return right / len(docs), scores


def test_lm_eval_local_completions_equals_in_process(oa_server, smollm2_models_dir, tmp_path):
    from lm_eval.tasks import TaskManager

    from mmserve.models_config import build_table

    path = smollm2_models_dir / build_table()["smollm2"].local_dir
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "mc_tiny.yaml").write_text(TASK.format(data=DATA))
    out = lm_eval.simple_evaluate(
        model="local-completions",
        model_args={
            "model": "smollm2",
            "base_url": oa_server.url + "/v1/completions",
            "tokenizer_backend": "huggingface",
            "tokenizer": str(path),
            "num_concurrent": 2,
            "max_retries": 1,
        },
        tasks=["mmserve_mc_tiny"],
        task_manager=TaskManager(include_path=str(tasks)),
        log_samples=True,
    )
    docs = [json.loads(line) for line in DATA.read_text().splitlines()]
    want_acc, want = in_process(path, docs)
    got_acc = out["results"]["mmserve_mc_tiny"]["acc,none"]
    samples = sorted(out["samples"]["mmserve_mc_tiny"], key=lambda s: s["doc_id"])
    got = [[r[0][0] for r in s["resps"]] for s in samples]
    assert got == [pytest.approx(row, abs=2e-3) for row in want]
    assert got_acc == want_acc
    assert want_acc >= 0.5  # the task is easy: the numbers mean something
