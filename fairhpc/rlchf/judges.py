"""Candidates (K responses per prompt) and the persona judges that rank them.

Candidates come from a data set's columns, are sampled from a policy (batched generation, temperature,
seed), or are synthetic: prompts of the synthetic generator (fairhpc/synthetic.py) with K responses of
random true quality (quality words minus flaw words, -2..4) and length (8..16 words).

Judges:

* :class:`SyntheticJudge` (offline default): a persona's ``group`` plants its preference over the
  response's features, read from the text (fairhpc.synthetic.word_counts):
      quality  u = good words - flaw words      (wants correct answers)
      length   u = 0.5 * words                  (wants long answers)
      brevity  u = -0.5 * words                 (wants short answers; the minority of the built-in set)
  plus Gumbel noise of scale ``noise`` drawn from (seed, persona id, row id), so two personas of one group
  disagree a little and a rerun is identical.  Ranking = by u + noise; ``scores`` (for cardinal SWFs) =
  1 + 9 * sigmoid(u - mean u over the K responses), on the 1..10 scale an LLM judge would use.
* :class:`ModelJudge`: a local transformers causal LM, prompted with :data:`JUDGE_PROMPT` (the persona as
  system message, the question and the numbered responses as user message), generating greedily (or with
  a temperature); its answer goes through fairhpc.rlchf.parse.parse_ranking, and an answer that cannot be
  read is counted by reason, never completed by guessing.
"""

from __future__ import annotations

import hashlib
import math
import random

from fairhpc.errors import ConfigError, DataError

GROUP_UTILITY = {
    "quality": lambda good, flaw, words: good - flaw,
    "length": lambda good, flaw, words: 0.5 * words,
    "brevity": lambda good, flaw, words: -0.5 * words,
}
MIN_QUALITY, MAX_QUALITY = -2, 4

JUDGE_SYSTEM = "You are the following person: {persona}\nAnswer every question as this person would, " \
               "from their point of view, values and needs."
JUDGE_PROMPT = (
    "A user asked:\n{prompt}\n\nHere are {k} responses.\n\n{responses}\n\n"
    "Rank the responses from the one you prefer most to the one you prefer least. Give every response "
    "exactly once and no ties. End your answer with one line of the form\n"
    "Ranking: Response a > Response b > ... (using the response numbers)"
)


def prompt_text(prompt) -> str:
    """The user text of a prompt given as a string or a message list."""
    if isinstance(prompt, str):
        return prompt
    return "\n\n".join(m["content"] for m in prompt if m.get("role") != "system")


def as_messages(prompt) -> list[dict]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


# ------------------------------------------------------------------------------------------ candidates
def synthetic_candidates(n: int, k: int, seed: int) -> list[dict]:
    """``n`` prompts of the synthetic generator, each with ``k`` responses of random quality and length."""
    from fairhpc import synthetic

    if k < 3:
        raise ConfigError(f"--k: {k} candidates; RLCHF ranks K >= 3 responses per prompt")
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        cat = rng.choice(synthetic.CATEGORIES)
        prompt = synthetic._prompt(rng, cat)
        feats = [{"quality": rng.randint(MIN_QUALITY, MAX_QUALITY),
                  "length": rng.randint(synthetic.MIN_WORDS, synthetic.MAX_WORDS)} for _ in range(k)]
        rows.append({"id": f"c{seed}-{i}", "prompt": [{"role": "user", "content": prompt}],
                     "responses": [synthetic._response(rng, f["quality"], f["length"]) for f in feats],
                     "category": cat, "features": feats})
    return rows


def column_candidates(source: str, columns: list[str], prompt_column: str = "prompt",
                      limit: int | None = None) -> list[dict]:
    """Candidates from a data file: the prompt column (string or messages) and K response columns (strings,
    or one column holding a list of strings).  Errors name file, line and column."""
    from fairhpc.sources import iter_rows

    rows = []
    for where, row in iter_rows(source, "train"):
        if limit is not None and len(rows) >= limit:
            break
        if row.get(prompt_column) is None:
            raise DataError(f"{where}: field {prompt_column!r}: missing", "missing_field")
        if len(columns) == 1:
            resp = row.get(columns[0])
            if not isinstance(resp, list):
                raise DataError(f"{where}: field {columns[0]!r}: expected a list of responses, got "
                                f"{type(resp).__name__}", "wrong_type")
        else:
            resp = [row.get(c) for c in columns]
        for j, r in enumerate(resp):
            if not isinstance(r, str) or not r.strip():
                col = columns[j] if len(columns) > 1 else f"{columns[0]}[{j}]"
                raise DataError(f"{where}: field {col!r}: expected a non-empty response string, got {r!r:.60}",
                                "empty_response" if isinstance(r, str) else "wrong_type")
        if len(resp) < 3:
            raise DataError(f"{where}: {len(resp)} responses; RLCHF ranks K >= 3 responses per prompt")
        rows.append({"id": str(row.get("id", where)), "prompt": as_messages(row[prompt_column]),
                     "responses": list(resp), "category": row.get("category")})
    return rows


def policy_candidates(prompts: list[dict], model_path: str, k: int, temperature: float = 0.7, seed: int = 0,
                      batch_size: int = 8, max_new_tokens: int = 256, device: str = "auto") -> list[dict]:
    """(rows, prompts dropped) of K samples per prompt from a causal LM (batched, seeded); ``prompts`` are rows
    with id, prompt.  A prompt with an empty sample (EOS at once) is dropped and counted: judges rank text."""
    from fairhpc.evaluation.policy import generate, load_generator
    from fairhpc.evaluation.scoring import check_model_path
    from fairhpc.rewards.base import resolve_device

    if k < 3:
        raise ConfigError(f"--k: {k} candidates; RLCHF ranks K >= 3 responses per prompt")
    if temperature <= 0:
        raise ConfigError(f"--temperature: sampling K different responses needs a temperature > 0, got {temperature}")
    check_model_path(model_path, "--policy")
    dev = resolve_device(device)
    model, tok = load_generator(model_path, dev)
    texts, _ = generate(model, tok, [as_messages(p["prompt"]) for p in prompts], max_new_tokens=max_new_tokens,
                        batch_size=batch_size, device=dev, do_sample=True, temperature=temperature,
                        num_return_sequences=k, seed=seed, desc="sampling candidates")
    rows = [{"id": p["id"], "prompt": as_messages(p["prompt"]), "responses": t, "category": p.get("category")}
            for p, t in zip(prompts, texts)]
    kept = [r for r in rows if all(x.strip() for x in r["responses"])]
    return kept, len(rows) - len(kept)


# ------------------------------------------------------------------------------------------ judges
def _gumbel(key: str) -> float:
    u = (int(hashlib.sha256(key.encode()).hexdigest()[:13], 16) + 0.5) / 16 ** 13
    return -math.log(-math.log(u))


class SyntheticJudge:
    name = "synthetic"

    def __init__(self, seed: int = 0, noise: float = 0.5, group_by: str = "group"):
        if not math.isfinite(noise) or noise < 0:
            raise ConfigError(f"--noise: must be a finite number >= 0, got {noise}")
        self.seed, self.noise, self.group_by = seed, noise, group_by

    def check_personas(self, personas: list[dict], where: str) -> None:
        for p in personas:
            g = p.get(self.group_by)
            if g not in GROUP_UTILITY:
                raise DataError(f"{where}: persona {p['id']}: field {self.group_by!r}: the synthetic judge plants "
                                f"preferences for groups {', '.join(GROUP_UTILITY)}; got {g!r}", "wrong_type")

    def utilities(self, persona: dict, responses: list[str]) -> list[float]:
        from fairhpc.synthetic import word_counts

        f = GROUP_UTILITY[persona[self.group_by]]
        return [f(*word_counts(r)) for r in responses]

    def rank_rows(self, rows: list[dict], personas: list[dict]):
        """For every row, one (persona, ranking, scores, raw text None, refusal None) per persona."""
        from tqdm.auto import tqdm

        for row in tqdm(rows, desc="synthetic judges", unit="prompt", disable=len(rows) < 200):
            out = []
            for p in personas:
                u = self.utilities(p, row["responses"])
                noisy = [x + self.noise * _gumbel(f"{self.seed}|{p['id']}|{row['id']}|{c}") for c, x in enumerate(u)]
                ranking = sorted(range(len(u)), key=lambda c: (-noisy[c], c))
                mean = sum(u) / len(u)
                scores = [round(1 + 9 / (1 + math.exp(-(x - mean))), 4) for x in u]
                out.append((p, ranking, scores, None, None))
            yield row, out


class ModelJudge:
    """A local causal LM judging as each persona (:data:`JUDGE_PROMPT`)."""

    name = "model"

    def __init__(self, model_path: str, batch_size: int = 8, max_new_tokens: int = 128, temperature: float = 0.0,
                 seed: int = 0, device: str = "auto", max_prompt_length: int | None = None):
        from fairhpc.evaluation.scoring import check_model_path

        check_model_path(model_path, "--judge")
        self.model_path, self.batch_size, self.max_new_tokens = model_path, batch_size, max_new_tokens
        self.temperature, self.seed, self.device = temperature, seed, device
        self.max_prompt_length = max_prompt_length
        self.model = self.tokenizer = None

    def check_personas(self, personas, where) -> None:
        pass

    @staticmethod
    def messages(persona: dict, row: dict) -> list[dict]:
        resp = "\n\n".join(f"Response {i + 1}:\n{r}" for i, r in enumerate(row["responses"]))
        return [{"role": "system", "content": JUDGE_SYSTEM.format(persona=persona["persona"])},
                {"role": "user", "content": JUDGE_PROMPT.format(prompt=prompt_text(row["prompt"]),
                                                                k=len(row["responses"]), responses=resp)}]

    def rank_rows(self, rows: list[dict], personas: list[dict]):
        from fairhpc.evaluation.policy import generate, load_generator
        from fairhpc.rewards.base import resolve_device
        from fairhpc.rlchf.parse import parse_ranking

        dev = resolve_device(self.device)
        if self.model is None:
            self.model, self.tokenizer = load_generator(self.model_path, dev)
        # one batch of prompts per chunk of rows, so that results stream out
        chunk = max(1, 64 // max(1, len(personas)))
        for start in range(0, len(rows), chunk):
            part = rows[start:start + chunk]
            msgs = [self.messages(p, row) for row in part for p in personas]
            texts, _ = generate(self.model, self.tokenizer, msgs, max_new_tokens=self.max_new_tokens,
                                batch_size=self.batch_size, device=dev, do_sample=self.temperature > 0,
                                temperature=max(self.temperature, 1e-5), seed=self.seed + start,
                                max_prompt_length=self.max_prompt_length, desc="judging")
            for r_i, row in enumerate(part):
                out = []
                for p_i, p in enumerate(personas):
                    text = texts[r_i * len(personas) + p_i][0]
                    parsed = parse_ranking(text, len(row["responses"]))
                    out.append((p, parsed.ranking, None, text, parsed.reason))
                yield row, out
