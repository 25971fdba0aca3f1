"""K sampled responses per prompt from a policy directory: Hugging Face ``generate`` (engine ``hf``, the
default) or vLLM (engine ``vllm``, when it is installed), behind one function.

Both engines render the prompt with the policy's chat template (generation prompt appended), cut it on the
left to ``max_prompt_length`` tokens, sample with the given temperature and top-p (no top-k) and stop at EOS
or after ``max_new_tokens``; both are seeded, so a rerun of a job draws the same samples on the same device.
"""

from __future__ import annotations

from fairhpc import registry
from fairhpc.errors import ConfigError


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def check_engine(engine: str, where: str = "generate.engine") -> None:
    if engine not in registry.GENERATE_ENGINES:
        raise ConfigError(f"{where}: {engine!r} is not an engine ({', '.join(registry.GENERATE_ENGINES)})")
    if engine == "vllm" and not vllm_available():
        raise ConfigError(f"{where}: vllm is not installed here (pip install vllm, on a CUDA machine), or use "
                          "engine hf")


def sample(policy: str, prompts: list[list[dict]], k: int, temperature: float, top_p: float,
           max_new_tokens: int, seed: int, engine: str = "hf", batch_size: int = 8,
           max_prompt_length: int | None = None, device: str = "auto") -> tuple[list[list[str]], list[list[int]]]:
    """([P][K] response texts, [P][K] generated token counts) of ``policy`` on chat ``prompts``."""
    check_engine(engine)
    if engine == "vllm":
        return _sample_vllm(policy, prompts, k, temperature, top_p, max_new_tokens, seed, max_prompt_length)
    from fairhpc.evaluation.policy import generate, load_generator

    model, tok = load_generator(policy, device)
    return generate(model, tok, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                    device=next(model.parameters()).device, do_sample=True, temperature=temperature,
                    top_p=top_p, num_return_sequences=k, seed=seed, max_prompt_length=max_prompt_length,
                    desc="sampling")


def _sample_vllm(policy, prompts, k, temperature, top_p, max_new_tokens, seed, max_prompt_length):
    from vllm import LLM, SamplingParams

    from fairhpc.data import render_messages
    from fairhpc.rewards.base import load_tokenizer_for

    tok = load_tokenizer_for(policy)
    ids = []
    for p in prompts:
        x = tok(render_messages(tok, p, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
        ids.append(x[-max_prompt_length:] if max_prompt_length else x)
    llm = LLM(model=str(policy), tokenizer=str(policy), seed=seed)
    params = SamplingParams(n=k, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, seed=seed)
    outs = llm.generate([{"prompt_token_ids": x} for x in ids], params)
    return ([[o.text.strip() for o in out.outputs] for out in outs],
            [[len(o.token_ids) for o in out.outputs] for out in outs])
