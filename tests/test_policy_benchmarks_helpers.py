"""Tiny local models and MT-Bench / AlpacaEval / lm-eval files for tests/test_policy_benchmarks.py (no tests
here)."""

from __future__ import annotations

import json
from pathlib import Path

SMALL = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
         "intermediate_size": 64}


def tiny_causal_lm(path: Path, seed: int, max_positions: int = 512, **shape) -> Path:
    """A randomly initialised tiny Llama with the built-in tokenizer, saved with save_pretrained."""
    import torch

    from fairhpc.config import TinyModelConfig
    from fairhpc.models import build_tiny_policy
    from fairhpc.tokenizer import build_tokenizer

    torch.manual_seed(seed)
    tok = build_tokenizer()
    model = build_tiny_policy(TinyModelConfig(**{**SMALL, **shape}, max_position_embeddings=max_positions), tok)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def constant_rating_judge(path: Path, rating: str = "[[7]]", steps: int = 60, seed: int = 3) -> Path:
    """A tiny judge taught (a few dozen Adam steps) to answer every judge conversation that FastChat renders for
    it with ``rating``: prompts come from FastChat's conversation template of the judge's path, the same
    rendering FastChat's local inference uses when it judges."""
    import random

    import torch
    from fastchat.model import get_conversation_template
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tiny_causal_lm(path, seed, max_positions=2048, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                   intermediate_size=128)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    rng = random.Random(seed)
    words = ["the", "answer", "is", "question", "assistant", "helpful", "rate", "score", "correct", "wrong",
             "poem", "city", "number"]
    seqs = []
    for _ in range(16):
        conv = get_conversation_template(str(path))
        conv.set_system_message(" ".join(rng.choices(words, k=rng.randint(3, 12))))
        conv.append_message(conv.roles[0], " ".join(rng.choices(words, k=rng.randint(10, 120))))
        conv.append_message(conv.roles[1], None)
        prompt = tok(conv.get_prompt()).input_ids
        target = tok(rating, add_special_tokens=False).input_ids + [tok.eos_token_id]
        seqs.append((prompt, target))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        prompt, target = seqs[step % len(seqs)]
        ids = torch.tensor([prompt + target])
        labels = torch.tensor([[-100] * len(prompt) + target])
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    model.save_pretrained(path)
    return path


JUDGE_PROMPTS = [
    {"name": "single-v1", "type": "single", "category": "general", "output_format": "[[rating]]",
     "system_prompt": "Rate the assistant's answer from 1 to 10; reply with the rating as [[rating]].",
     "prompt_template": "[Question]\n{question}\n\n[Answer]\n{answer}\n[End of answer]"},
    {"name": "single-math-v1", "type": "single", "category": "math", "output_format": "[[rating]]",
     "system_prompt": "Compare the answer with the reference; reply with the rating as [[rating]].",
     "prompt_template": "[Question]\n{question}\n\n[Reference]\n{ref_answer_1}\n\n[Answer]\n{answer}\n[End]"},
    {"name": "single-v1-multi-turn", "type": "single", "category": "general", "output_format": "[[rating]]",
     "system_prompt": "Rate the assistant's second answer; reply with the rating as [[rating]].",
     "prompt_template": "User: {question_1}\nAssistant: {answer_1}\nUser: {question_2}\nAssistant: {answer_2}"},
    {"name": "single-math-v1-multi-turn", "type": "single", "category": "math", "output_format": "[[rating]]",
     "system_prompt": "Compare the second answer with the reference; reply with the rating as [[rating]].",
     "prompt_template": "User: {question_1}\nReference: {ref_answer_1}\nAssistant: {answer_1}\n"
                        "User: {question_2}\nReference: {ref_answer_2}\nAssistant: {answer_2}"},
]

QUESTIONS = [
    {"question_id": 81, "category": "writing", "turns": ["Write a short note about a trip.", "Make it rhyme."]},
    {"question_id": 111, "category": "math", "turns": ["What is 3 + 4?", "And 3 * 4?"]},
    {"question_id": 151, "category": "humanities", "turns": ["Name a famous painter.", "Why is the painter known?"]},
]
REFERENCES = [{"question_id": 111, "answer_id": "ref111", "model_id": "gpt-4",
               "choices": [{"index": 0, "turns": ["7", "12"]}], "tstamp": 0.0}]


def mt_bench_dir(root: Path) -> Path:
    """A folder in FastChat's MT-Bench layout with three questions, judge prompts and a reference answer."""
    (root / "mt_bench/reference_answer").mkdir(parents=True, exist_ok=True)
    (root / "mt_bench/question.jsonl").write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    (root / "judge_prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in JUDGE_PROMPTS))
    (root / "mt_bench/reference_answer/gpt-4.jsonl").write_text("".join(json.dumps(r) + "\n" for r in REFERENCES))
    return root


INSTRUCTIONS = ["What is the capital of France?", "Write a haiku about rain.", "Explain why the sky is blue.",
                "List three fruits.", "How do I boil an egg?", "Give a synonym of happy."]


def alpaca_eval_files(root: Path) -> Path:
    """Local AlpacaEval instruction file (the hub set's record format)."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / "alpaca_eval.json"
    path.write_text(json.dumps([{"instruction": i, "output": "", "generator": "none", "dataset": "helpful_base"}
                                for i in INSTRUCTIONS]))
    return path


def first_letter_judge_config(root: Path, judge: Path) -> Path:
    """An alpaca_eval annotator config (the package's format) running ``judge`` through the package's
    huggingface_local_completions; the first letter of its completion decides (a-m: output (a) wins)."""
    cfg = root / "tiny_judge"
    cfg.mkdir(parents=True, exist_ok=True)
    (cfg / "prompt.txt").write_text(
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhich output follows the instruction "
        "better?\n\nInstruction: {instruction}\n\nOutput (a): {output_1}\n\nOutput (b): {output_2}<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nOutput (")
    (cfg / "configs.yaml").write_text(
        "tiny_judge:\n"
        '  prompt_template: "tiny_judge/prompt.txt"\n'
        '  fn_completions: "huggingface_local_completions"\n'
        "  completions_kwargs:\n"
        f'    model_name: "{judge}"\n'
        "    max_new_tokens: 6\n"
        "    do_sample: false\n"
        "  fn_completion_parser: regex_parser\n"
        "  completion_parser_kwargs:\n"
        "    outputs_to_match:\n"
        "      1: '(?is)\\A\\W*[a-m].*'\n"
        "      2: '(?is)\\A\\W*[^a-m\\W].*'\n"
        "  batch_size: 1\n")
    return cfg


LM_TASK = [{"question": "Which is a fruit?", "choices": ["apple", "car", "stone"], "label": 0},
           {"question": "What color is the sky?", "choices": ["green", "blue"], "label": 1},
           {"question": "Two plus two is", "choices": ["four", "five", "six"], "label": 0},
           {"question": "Water is", "choices": ["dry", "wet"], "label": 1}]


def lm_eval_task_dir(root: Path) -> Path:
    """A harness task whose data is a local JSONL file (dataset_path json + data_files)."""
    root.mkdir(parents=True, exist_ok=True)
    data = root / "tiny_mc.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in LM_TASK))
    (root / "tiny_mc.yaml").write_text(
        "task: fairhpc_tiny_mc\n"
        "dataset_path: json\n"
        "dataset_kwargs:\n"
        "  data_files:\n"
        f"    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\n'
        'doc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{label}}"\n'
        "metric_list:\n"
        "  - metric: acc\n"
        "    aggregation: mean\n"
        "    higher_is_better: true\n")
    return root
