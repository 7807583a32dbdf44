"""Step-wise search continues from the token ids the policy generated, not from re-tokenized text.

chain-tiny's tokenizer (tasks.chain.policy.build_tokenizer, built in well under a second) spells the blank line
after a digit as one token "\\n\\n" when re-tokenized from text, but the policy answers after the two tokens
"\\n","\\n". A scripted backend that behaves like chain-tiny (another step after "\\n\\n", the answer after
"\\n","\\n") shows the difference: continuing from text, beam search never answers.
"""
from __future__ import annotations

import pytest
import torch

from tasks.chain.policy import ChainModelSpec, build_tokenizer
from rl.config import RolloutConfig
from rl.rollout import Completion
from rl.search_methods import SearchProblem, SearchSettings, beam_search, dvts
from rl.search_policy import RolloutPolicy

QUESTION = "What is ((1 + 2) + 1) * 2?"


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(ChainModelSpec())


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


class ChainLikeBackend:
    """Step mode, like chain-tiny: after the single token "\\n\\n" it writes another operation, after
    "\\n","\\n" (or after its k-th step, where it ends the step with those two tokens) the answer line."""

    def __init__(self, tok, steps=("1 + 2 = 3", "3 + 1 = 4", "4 * 2 = 8"), tail=None):
        self.tokenizer, self.steps, self.tail, self.prompts = tok, steps, tail, []
        self.nl, self.nlnl = tok.convert_tokens_to_ids("Ċ"), tok.convert_tokens_to_ids("ĊĊ")

    def prompt_ids(self, prompt):
        return list(prompt) if isinstance(prompt, list) else ids(self.tokenizer, prompt)

    def generate(self, prompts, n, max_new_tokens, temperature=1.0, top_p=1.0, stop=None, seeds=None):
        self.prompts.append(list(prompts))
        return [[self._one(self.prompt_ids(p)) for _ in range(n)] for p in prompts]

    def _one(self, context: list[int]) -> Completion:
        done = self.tokenizer.decode(context).count("=")
        if context[-2:] == [self.nl, self.nl]:    # "\n","\n": the policy answers
            out = ids(self.tokenizer, "The answer is 8.") + [self.tokenizer.eos_token_id]
        else:                         # after "\n\n" (or the prompt): the next operation
            step = ids(self.tokenizer, self.steps[min(done, len(self.steps) - 1)])
            last = done + 1 >= len(self.steps)
            out = step + ([self.nl, self.nl] if last else [self.nlnl]) + (self.tail or [])
        text = self.tokenizer.decode(out, skip_special_tokens=True)
        cut = text.find("\n\n")
        return Completion(text if cut < 0 else text[:cut + 2], out, [0.0] * len(out), "stop", 0)


def constant_score(questions, steps_list):
    from types import SimpleNamespace
    return [SimpleNamespace(mean=[0.5] * len(s), std=[0.0] * len(s)) for s in steps_list]


def problem(tok, with_ids: bool) -> SearchProblem:
    prompt = tok.apply_chat_template([{"role": "user", "content": QUESTION}], tokenize=False,
                                     add_generation_prompt=True)
    return SearchProblem(QUESTION, prompt, "8", prompt_ids=ids(tok, prompt) if with_ids else None)


@pytest.mark.parametrize("method", [beam_search, dvts])
def test_step_wise_search_continues_from_the_generated_ids_and_answers(tok, method):
    backend = ChainLikeBackend(tok)
    policy = RolloutPolicy(backend, RolloutConfig(step_max_new_tokens=16, max_new_tokens=64))
    prob = problem(tok, with_ids=True)
    out = method([prob], policy, constant_score, SearchSettings(n=2, beam_width=2, max_iterations=6))[0]
    assert {s.answer for s in out.solutions} == {"8"}
    assert all(s.steps == ["1 + 2 = 3", "3 + 1 = 4", "4 * 2 = 8", "The answer is 8."] for s in out.solutions)
    # the context of the last round: the prompt's ids, then every generated id, "\n","\n" kept as two tokens
    generated = ids(tok, "1 + 2 = 3") + [backend.nlnl] + ids(tok, "3 + 1 = 4") + [backend.nlnl] \
        + ids(tok, "4 * 2 = 8") + [backend.nl, backend.nl]
    assert backend.prompts[3][0] == prob.prompt_ids + generated
    # what re-tokenizing the text would have handed over instead: the single "\n\n" the policy never answers after
    text = prob.prompt + "1 + 2 = 3\n\n3 + 1 = 4\n\n4 * 2 = 8\n\n"
    assert ids(tok, text)[-1] == backend.nlnl and ids(tok, text) != backend.prompts[3][0]


def test_without_ids_the_search_continues_from_text(tok):
    """A problem without prompt ids (and the stub policies of test_search_methods) keeps the text contexts."""
    backend = ChainLikeBackend(tok)
    policy = RolloutPolicy(backend, RolloutConfig(step_max_new_tokens=16, max_new_tokens=64))
    out = beam_search([problem(tok, with_ids=False)], policy, constant_score,
                      SearchSettings(n=2, beam_width=2, max_iterations=5))[0]
    assert all(isinstance(p, str) for call in backend.prompts for p in call)
    assert not any(s.answer for s in out.solutions)   # re-tokenized: the policy runs past the last operation


def test_a_token_past_the_separator_falls_back_to_text(tok):
    """Ids that decode to more than step + separator (a token straddling it; vLLM's text stops at the stop
    string, its ids do not) would put text the step does not have into the context: that beam uses text."""
    policy = RolloutPolicy(ChainLikeBackend(tok), RolloutConfig(step_max_new_tokens=16))
    exact = Completion("1 + 2 = 3\n\n", ids(tok, "1 + 2 = 3\n\n"), [], "stop", 0)
    past = Completion("1 + 2 = 3\n\n", ids(tok, "1 + 2 = 3\n\n4"), [], "stop", 0)
    capped = Completion("1 + 2 = 3", ids(tok, "1 + 2 = 3"), [], "length", 0)
    eos = Completion("The answer is 3.", ids(tok, "The answer is 3.") + [tok.eos_token_id], [], "stop", 0)
    assert policy._continuation(exact, True).token_ids == exact.token_ids
    assert policy._continuation(past, True).token_ids is None
    assert policy._continuation(capped, True).token_ids is None     # no separator generated: appended as text
    assert policy._continuation(eos, True).token_ids is None         # the solution is over
    backend = ChainLikeBackend(tok, steps=("1 + 2 = 3", "3 + 1 = 4", "4 + 4 = 8", "8 * 1 = 8"),
                               tail=ids(tok, "4"))   # every step's ids run one digit past its separator
    prob = problem(tok, with_ids=True)
    beam_search([prob], RolloutPolicy(backend, RolloutConfig(step_max_new_tokens=16)), constant_score,
                SearchSettings(n=1, beam_width=1, max_iterations=2))
    assert backend.prompts[0] == [prob.prompt_ids]
    assert backend.prompts[1] == [prob.prompt + "1 + 2 = 3\n\n"]


def test_hf_backend_generates_from_ids_as_from_text():
    from core.models import load_model
    from rl.engines import make_rollout
    from tasks.registry import format_prompt

    model, tok = load_model("tiny-random-llama", "fp32")
    backend = make_rollout("hf", model=model, tokenizer=tok, batch_size=4)
    prompts = [format_prompt(tok, "What is 2 + 3?"), format_prompt(tok, "What is 12 * 4 - 7?")]
    as_ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    torch.manual_seed(0)
    from_text = backend.generate(prompts, 2, 8, temperature=0.0)
    mixed = backend.generate([prompts[0], as_ids[1]], 2, 8, temperature=0.0)   # text and ids in one batch
    assert [[c.token_ids for c in g] for g in mixed] == [[c.token_ids for c in g] for g in from_text]
    flat = lambda groups: [lp for g in groups for c in g for lp in c.logprobs]   # noqa: E731
    assert flat(mixed) == pytest.approx(flat(from_text), abs=1e-5)
