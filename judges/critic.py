"""The critic prompt (ProcessBench style) and the parsing of a critic's verdict.

Paragraphs are 0-based like ProcessBench's labels; the critic answers with \\boxed{index} or -1.
"""
from __future__ import annotations

import re

PROMPT_VERSION = "critic-v2"  # part of the llm judge's identity: change it when the wording changes

# Sent as the system turn: without one, a served model's chat template puts in its own default
# system prompt (a generic assistant persona), which is not the critic's.
CRITIC_SYSTEM = ("You are a careful math teacher who reviews step-by-step solutions and names the first "
                 "paragraph that contains an error.")

CRITIC_PROMPT = """\
Below is a math problem and a proposed solution. The solution is split into paragraphs, each enclosed \
in tags and numbered from 0.

[Problem]

{problem}

[Solution]

{paragraphs}

Review the solution one paragraph at a time, in order. For each paragraph, check that its reasoning \
and calculations are correct given the problem and the paragraphs before it. Stop at the first \
paragraph that contains an error.

End your answer with the index of the earliest paragraph that contains an error in \\boxed{{}}, for \
example \\boxed{{2}}. If every paragraph is correct, end with \\boxed{{-1}}."""


def critic_prompt(problem: str, steps: list[str]) -> str:
    paragraphs = "\n\n".join(f"<paragraph_{i}>\n{step}\n</paragraph_{i}>" for i, step in enumerate(steps))
    return CRITIC_PROMPT.format(problem=problem, paragraphs=paragraphs)


_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_BOXED = re.compile(r"\\boxed\s*\{\s*(?:\\text\s*\{)?\s*([^{}]*?)\s*\}?\s*\}")
_INTEGER = re.compile(r"^(?:paragraph[_\s]*)?(-?\d+)\.?$", re.IGNORECASE)
_CONCLUSION = re.compile(r"conclusion\s*[:：]?\s*\**\s*(in)?correct\b(.*)", re.IGNORECASE | re.DOTALL)
_PARAGRAPH_REF = re.compile(r"paragraph[_\s]*(?:<paragraph_)?(-?\d+)", re.IGNORECASE)


def visible_answer(text: str) -> str:
    """The text after any reasoning: closed <think> blocks removed, and if a '</think>' remains
    (the opening tag was in the prompt), only what follows the last one. An unclosed <think> means
    the model never finished thinking: nothing visible."""
    text = _THINK_BLOCK.sub(" ", text)
    if "</think>" in text.lower():
        text = re.split(r"</think>", text, flags=re.IGNORECASE)[-1]
    if "<think>" in text.lower():
        text = re.split(r"<think>", text, flags=re.IGNORECASE)[0]
    return text


def parse_verdict(text: str, n_steps: int) -> int | None:
    """First-error index from a critic's output: -1 = all correct, None = invalid (unparseable or
    out of range). The last \\boxed{} wins; else a 'Conclusion: Correct / Incorrect ... paragraph N'."""
    answer = visible_answer(text)
    boxes = _BOXED.findall(answer)
    if boxes:
        m = _INTEGER.match(boxes[-1].strip())
        index = int(m.group(1)) if m else None
    else:
        index = _from_conclusion(answer)
    if index is None or not -1 <= index < n_steps:
        return None
    return index


def _from_conclusion(answer: str) -> int | None:
    matches = list(_CONCLUSION.finditer(answer))
    if not matches:
        return None
    incorrect, rest = matches[-1].group(1), matches[-1].group(2)
    if not incorrect:
        return -1
    ref = _PARAGRAPH_REF.search(rest)
    return int(ref.group(1)) if ref else None
