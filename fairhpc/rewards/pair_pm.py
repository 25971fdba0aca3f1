"""Pairwise preference model (kind pair_pm, ``fairhpc train-pair-pm``): a causal LM reads the prompt and two responses in
one sequence and answers with the token ``A`` or ``B``; the preference is read off those two logits.

The sequence (:func:`render_pair_prompt`, the layout of RLHFlow's pair-pm) is one user turn of the
tokenizer's chat template, followed by the assistant header, whose next token is the answer::

    [CONTEXT] {context} [RESPONSE A] {response_a} [RESPONSE B] {response_b} \\n

``context`` renders the prompt's messages as ``\\n\\n<turn> {role}\\n {content}`` each, then ``\\n\\n\\n``.
For a pair (x, y1, y2) let z_ab = logit(A) - logit(B) with y1 at A and z_ba the same with y1 at B.  Then

    P(y1 > y2) = ( sigmoid(z_ab) + sigmoid(-z_ba) ) / 2      (both orders averaged)

so P(y1 > y2) + P(y2 > y1) = 1 exactly (swapping y1, y2 swaps the two sequences), and the margin

    m = log P(y1 > y2) - log P(y2 > y1)                       (:func:`pair_margin`)

is the pair's score wherever the model is evaluated (eval-rm, benchmarks, Best-of-N, held-out metrics).

Training treats each ordering as one example whose answer is known: the margins are z_ab (y1 = chosen shown
as A, answer A) and -z_ba (chosen shown as B, answer B) (:func:`order_margins`), 2B margins for B pairs, so
``bt`` is the two-way cross-entropy of the answer averaged over both orders,
( -log sigmoid(z_ab) - log sigmoid(-z_ba) ) / 2, and ``fr`` / ``fc`` take those 2B allocations.  Training on
the averaged probability instead (-log P(chosen > rejected)) leaves a position bias free: a common shift c
of both answer gaps (z_ab = z_ba = c, "always answer B") gives P = 1/2 and the loss log 2 for every c, and a
large |c| saturates both sigmoids, so the order-sensitive part of the gradient vanishes and a run that drifts
there never leaves it.  The per-order cross-entropy penalises the shift (its minimum over c is at c = 0)
and is what RLHFlow's pair-pm trains (the next-token loss on the answer of each ordering).

Tokenization is by segments (chat header, context, the two markers, each response, the closing text), so
both orders hold exactly the same tokens in another arrangement; a response is encoded alike in either
position.  Too long a sequence loses the oldest context tokens first (``data.truncation_side``) down to
``data.max_prompt_length``, then the longer response's end, then both ends equally.

The final model is a plain transformers causal LM (``AutoModelForCausalLM``) with its tokenizer; its
config.json records ``fairhpc_kind: pair_pm`` and final/fairhpc_model.json the template, so that the
evaluation commands score it pairwise (:class:`PairPMScorer`, docs/reward_models.md).  Training
(fairhpc/tasks/pair_pm.py) takes the template, the tokenization and the margins from here.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F

from fairhpc.errors import ConfigError
from fairhpc.rewards.base import PairScores, ScalarScoreError, Scorer, _eval_mode, _log_sigmoid, _sigmoid

KIND = "pair_pm"
PAIR_TEMPLATE = "[CONTEXT] {context} [RESPONSE A] {response_a} [RESPONSE B] {response_b} \n"
CONTEXT_TURN = "\n\n<turn> {role}\n {content}"
CONTEXT_END = "\n\n\n"
ANSWERS = ("A", "B")
_SLOT = "\x00"  # stands for the user turn's text when the chat template is split around it


def render_context(messages: list[dict]) -> str:
    """The prompt's messages as the template's context: ``\\n\\n<turn> role\\n content`` per message."""
    return "".join(CONTEXT_TURN.format(role=m["role"], content=m["content"]) for m in messages) + CONTEXT_END


def response_text(messages: list[dict]) -> str:
    """A response (a list of assistant messages) as one text: its content, or its turns rendered like the
    context when it has several messages."""
    if len(messages) == 1:
        return messages[0]["content"]
    return "".join(CONTEXT_TURN.format(role=m["role"], content=m["content"]) for m in messages).strip()


def render_pair_prompt(prompt: list[dict], response_a: str, response_b: str) -> str:
    """The user turn the model reads: PAIR_TEMPLATE filled with the rendered context and the two responses."""
    return PAIR_TEMPLATE.format(context=render_context(prompt), response_a=response_a, response_b=response_b)


def chat_frame(tokenizer) -> tuple[str, str]:
    """(text before, text after) the user turn in the tokenizer's chat template, the assistant header
    included in the second: the model's next token after the whole text is its answer."""
    from fairhpc.data import render_messages

    text = render_messages(tokenizer, [{"role": "user", "content": _SLOT}], add_generation_prompt=True)
    head, _, tail = text.partition(_SLOT)
    return head, tail


def render_pair_text(tokenizer, prompt: list[dict], response_a: str, response_b: str) -> str:
    """The whole text of one ordering (chat frame around :func:`render_pair_prompt`)."""
    head, tail = chat_frame(tokenizer)
    return head + render_pair_prompt(prompt, response_a, response_b) + tail


def answer_token_ids(tokenizer) -> tuple[int, int]:
    """Token ids of the answers A and B; each must be one token of the tokenizer (ConfigError otherwise)."""
    ids = []
    for a in ANSWERS:
        enc = tokenizer(a, add_special_tokens=False)["input_ids"]
        if len(enc) != 1:
            raise ConfigError(f"model.tokenizer: the pair-pm answer {a!r} is {len(enc)} tokens {enc} of this "
                              "tokenizer; a pairwise preference model needs each answer to be one token")
        ids.append(int(enc[0]))
    if ids[0] == ids[1]:
        raise ConfigError(f"model.tokenizer: the answers A and B are the same token {ids[0]}")
    return ids[0], ids[1]


class PairTokenizer:
    """Token ids of both orderings of (prompt, y1, y2), by segments (module docstring)."""

    def __init__(self, tokenizer, max_length: int, max_prompt_length: int, truncation_side: str = "left"):
        from fairhpc.data import _adds_bos

        self.tok = tokenizer
        self.max_length, self.max_prompt_length, self.side = max_length, max_prompt_length, truncation_side
        head, tail = chat_frame(tokenizer)
        ctx_open, mark_a, mark_b, close = _template_parts()
        self.head = self._enc(head + ctx_open)
        if _adds_bos(tokenizer) and self.head[:1] != [tokenizer.bos_token_id]:
            self.head.insert(0, tokenizer.bos_token_id)
        self.mark_a, self.mark_b, self.tail = self._enc(mark_a), self._enc(mark_b), self._enc(close + tail)
        self.fixed = len(self.head) + len(self.mark_a) + len(self.mark_b) + len(self.tail)
        if max_length - self.fixed < 3:
            raise ConfigError(f"data.max_length: {max_length} tokens leave no room for the pair-pm template, "
                              f"whose fixed parts take {self.fixed} tokens; raise data.max_length")

    def _enc(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"]) if text else []

    def __call__(self, prompt: list[dict], y1: str, y2: str) -> tuple[list[int], list[int], dict]:
        """(ids with y1 at A, ids with y1 at B, truncation info)."""
        ctx, a, b = self._enc(render_context(prompt)), self._enc(y1), self._enc(y2)
        n_ctx, n_a, n_b = len(ctx), len(a), len(b)
        budget = self.max_length - self.fixed
        if n_ctx + n_a + n_b > budget:
            keep = min(n_ctx, max(min(self.max_prompt_length, budget - 2), budget - n_a - n_b))
            ctx = ctx[n_ctx - keep:] if self.side == "left" else ctx[:keep]
            room = budget - len(ctx)
            if n_a + n_b > room:  # the shorter keeps what it can up to half, the longer takes the rest
                short = min(n_a, n_b, room // 2)
                if n_a == n_b:  # the same cut for both, so that swapping them gives the same tokens
                    cap_a = cap_b = short
                else:
                    cap_a = short if n_a < n_b else room - short
                    cap_b = room - cap_a
                a, b = a[:cap_a], b[:cap_b]
        ab = self.head + ctx + self.mark_a + a + self.mark_b + b + self.tail
        ba = self.head + ctx + self.mark_a + b + self.mark_b + a + self.tail
        info = {"context_tokens": n_ctx, "response_tokens": n_a + n_b, "pair_tokens": len(ab),
                "prompt_truncated": len(ctx) < n_ctx, "response_truncated": len(a) + len(b) < n_a + n_b}
        return ab, ba, info


def _template_parts() -> tuple[str, str, str, str]:
    """PAIR_TEMPLATE cut at its slots: text before the context, between context and response A, between
    the responses, after response B."""
    t = PAIR_TEMPLATE
    ctx_open, rest = t.split("{context}")
    mark_a, rest = rest.split("{response_a}")
    mark_b, close = rest.split("{response_b}")
    return ctx_open, mark_a, mark_b, close


def collate_sequences(seqs: list[list[int]], pad_id: int) -> dict:
    """Left-padded [N, L] input_ids, attention_mask and position_ids (positions count real tokens only),
    so that the last column is every sequence's last token."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.as_tensor(s, dtype=torch.long)
        mask[i, width - len(s):] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": pos}


def answer_gap(model, input_ids, attention_mask, position_ids, answer_ids: tuple[int, int]) -> torch.Tensor:
    """[N] logit(A) - logit(B) of the next token after each left-padded sequence (float32)."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                use_cache=False, logits_to_keep=1)
    last = out.logits[:, -1].float()
    return last[:, answer_ids[0]] - last[:, answer_ids[1]]


def pair_margin(z_ab: torch.Tensor, z_ba: torch.Tensor) -> torch.Tensor:
    """log P(y1 > y2) - log P(y2 > y1) from the answer gaps of both orders (module docstring), computed in
    log space: exactly antisymmetric under swapping y1 and y2 (which maps (z_ab, z_ba) to (z_ba, z_ab))."""
    win = torch.logaddexp(F.logsigmoid(z_ab), F.logsigmoid(-z_ba))
    lose = torch.logaddexp(F.logsigmoid(-z_ab), F.logsigmoid(z_ba))
    return win - lose


def order_margins(z_ab: torch.Tensor, z_ba: torch.Tensor) -> torch.Tensor:
    """[2N] the training margins: each ordering of a pair is one example whose margin is the log-odds of the
    right answer, z_ab for the order with y1 at A and -z_ba for the order with y1 at B (module docstring)."""
    return torch.cat([z_ab, -z_ba])


def write_pair_marker(final_dir, tokenizer, data_cfg) -> None:
    """fairhpc_model.json of a pair-pm model directory: its kind, template and answer tokens."""
    from fairhpc.rewards.base import write_marker

    write_marker(final_dir, {"kind": KIND, "template": PAIR_TEMPLATE, "context_turn": CONTEXT_TURN,
                             "context_end": CONTEXT_END, "answers": list(ANSWERS),
                             "answer_token_ids": list(answer_token_ids(tokenizer)),
                             "max_length": data_cfg.max_length, "max_prompt_length": data_cfg.max_prompt_length,
                             "truncation_side": data_cfg.truncation_side})


class PairPMScorer(Scorer):
    """A pairwise preference model: scored pairwise, never by a scalar."""

    kind = "pair_pm"
    pairwise = True

    def __init__(self, model, tokenizer, device, name: str):

        super().__init__(name, device)
        self.model, self.tokenizer = model, tokenizer
        self.answer_ids = answer_token_ids(tokenizer)

    def _gaps(self, seqs: list[list[int]], batch_size: int, desc: str) -> np.ndarray:
        import torch
        from tqdm.auto import tqdm


        n = len(seqs)
        out = np.empty(n, dtype=np.float64)
        order = sorted(range(n), key=lambda i: len(seqs[i]), reverse=True)
        with _eval_mode(self.model), torch.no_grad():
            for start in tqdm(range(0, n, batch_size), desc=desc, unit="batch", disable=n == 0):
                idx = order[start:start + batch_size]
                b = collate_sequences([seqs[i] for i in idx], self.tokenizer.pad_token_id)
                z = answer_gap(self.model, b["input_ids"].to(self.device), b["attention_mask"].to(self.device),
                               b["position_ids"].to(self.device), self.answer_ids)
                out[idx] = z.double().cpu().numpy()
        return out

    def prefer(self, prompts, ys1: list[str], ys2: list[str], data_cfg, batch_size: int,
               desc: str = "comparing pairs") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """([N] log P(y1 > y2) - log P(y2 > y1), [N] z_ab, [N] z_ba) of each (prompt, y1, y2)."""
        import torch


        pt = PairTokenizer(self.tokenizer, data_cfg.max_length, data_cfg.max_prompt_length,
                           data_cfg.truncation_side)
        enc = [pt(p, a, b) for p, a, b in zip(prompts, ys1, ys2)]
        n = len(enc)
        z = self._gaps([e[0] for e in enc] + [e[1] for e in enc], batch_size, desc)
        z_ab, z_ba = z[:n], z[n:]
        m = pair_margin(torch.from_numpy(z_ab), torch.from_numpy(z_ba)).numpy()
        return m, z_ab, z_ba

    def compare(self, prompts, ys1: list[str], ys2: list[str], data_cfg, batch_size: int,
                desc: str = "comparing pairs") -> np.ndarray:
        """[N] log P(y1 > y2) - log P(y2 > y1) of each (prompt, y1, y2)."""
        return self.prefer(prompts, ys1, ys2, data_cfg, batch_size, desc)[0]

    def score_pairs(self, examples, data_cfg, batch_size: int, desc: str = "comparing pairs"):
        ch = [response_text(ex.chosen) for ex in examples]
        rj = [response_text(ex.rejected) for ex in examples]
        m, z_ab, z_ba = self.prefer([ex.prompt for ex in examples], ch, rj, data_cfg, batch_size, desc)
        log_sig = _log_sigmoid
        scores = PairScores(log_sig(m), log_sig(-m), self._lengths(ch), self._lengths(rj))
        extras = {"pairwise": {"p_chosen": _sigmoid(m), "p_chosen_first": _sigmoid(z_ab),
                               "p_chosen_second": _sigmoid(-z_ba)}}
        return scores, extras

    def _lengths(self, texts: list[str]) -> np.ndarray:
        enc = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []
        return np.array([len(e) for e in enc], dtype=np.int64)

    def preference_matrices(self, prompts, candidates: list[list[str]], data_cfg, batch_size: int,
                            desc: str = "comparing candidates") -> np.ndarray:
        """[P, K, K] P(candidate i > candidate j) for each prompt (diagonal 1/2), from the K(K-1)/2 pairs."""
        k = len(candidates[0])
        pairs = list(itertools.combinations(range(k), 2))
        ps, a, b = [], [], []
        for p, cands in zip(prompts, candidates):
            for i, j in pairs:
                ps.append(p)
                a.append(cands[i])
                b.append(cands[j])
        m, _, _ = self.prefer(ps, a, b, data_cfg, batch_size, desc)
        out = np.full((len(prompts), k, k), 0.5)
        m = m.reshape(len(prompts), len(pairs))
        for col, (i, j) in enumerate(pairs):
            out[:, i, j] = _sigmoid(m[:, col])
            out[:, j, i] = _sigmoid(-m[:, col])
        return out

    def score_responses(self, prompts, responses, data_cfg, batch_size: int, desc: str = "scoring responses"):
        raise ScalarScoreError(
            f"{self.name}: a pairwise preference model (kind pair_pm) compares two responses and has no scalar "
            "score for one response; score it pairwise (eval-rm, eval-benchmark, best-of-n --pairwise)")
