"""Judges: name the first wrong step of a solution (oracle, rule, chain, llm), with a budgeted SQLite ledger.

Depends on nothing in prm or rl; they depend on it.
"""
from judges.base import Cost, Item, Judge, Verdict, item_key
from judges.chain import ChainJudge
from judges.chat_client import (JudgeAuthError, JudgeBudgetStop, JudgeEndpointError, JudgeError,
                                JudgeRequestError, JudgeUnavailableError)
from judges.config import (ChainJudgeConfig, JudgeConfig, JudgeEvalConfig, LLMJudgeConfig, OracleJudgeConfig, RuleJudgeConfig,
                            RuleOutcomeJudgeConfig)
from judges.ledger import LabelCounts, LabelLedger
from judges.llm import LLMJudge
from judges.metrics import processbench_f1
from judges.oracle import OracleJudge
from judges.registry import JUDGES, JudgeKind, make_judge, register_judge, validate_judge_config
from judges.rule import RuleJudge
from judges.rule_outcome import RuleOutcomeJudge

__all__ = [
    "JUDGES", "JudgeKind", "Cost", "Item", "Judge", "Verdict", "item_key", "make_judge", "register_judge",
    "JudgeError", "JudgeAuthError", "JudgeBudgetStop", "JudgeEndpointError", "JudgeRequestError", "JudgeUnavailableError",
    "JudgeConfig", "JudgeEvalConfig", "LLMJudgeConfig", "OracleJudgeConfig", "RuleJudgeConfig", "RuleOutcomeJudgeConfig",
    "ChainJudgeConfig", "validate_judge_config", "LabelCounts", "LabelLedger", "LLMJudge", "OracleJudge", "RuleJudge", "RuleOutcomeJudge",
    "ChainJudge",
    "processbench_f1",
]
