"""Per-GPU memory plan of a run, from the model architectures and the settings, before anything loads.

    arch = architecture("Qwen/Qwen2.5-7B-Instruct")        # built-in table, a local dir's config.json, or the HF cache
    policy = TrainedModel(arch, "bf16", "full", zero_stage=2)
    policy.weights(world=8), policy.gradients(8), policy.optimizer(8)   # bytes on one GPU
    plan = MemoryPlan([Item("policy weights", gb, ("training", "generation"), "policy.zero_stage=3"), ...], 80)
    print(plan.table()); plan.fits; plan.advice()
(rl/plan.py builds the items of an rl.online config.)

Accounting (GB = 1e9 bytes; P = parameters, N = ranks, b = bytes of the dtype):
- trained parameters follow the ZeRO paper (Rajbhandari et al. 2020, section 3.1): weights b, gradients b,
  optimizer 12 bytes in mixed precision (fp32 master copy + two AdamW moments) or 8 in fp32 (the moments);
  ZeRO-1 divides the optimizer by N, ZeRO-2 also the gradients, ZeRO-3 also the weights, which then need a
  gathered working set of at most DeepSpeed's default `stage3_max_live_parameters` (1e9 parameters);
- a frozen model (the PRM's backbone, the reference) is b bytes a parameter, replicated unless ZeRO-3;
- activations of one training micro-batch (T tokens): per token and layer the tensors a decoder layer keeps
  for backward (two norm inputs, the projections' inputs, q, k, v, the attention output, the MLP's gate, up,
  activation and product): 4h + 2 q_dim + 2 kv_dim + 4 I elements of b bytes; gradient checkpointing keeps
  the layers' inputs (h per layer) plus one layer's set while it is recomputed;
- logits: the completion positions of the micro-batch times the vocabulary, in b bytes, twice (the LM head's
  output and, in backward, its gradient); the log-prob path's fp32 temporaries are one chunk of positions
  (rl.policy.completion_logprobs), not counted;
- the colocated vLLM engine holds `gpu_memory_utilization` x the card (its weights + KV cache); asleep it holds
  nothing on the GPU (weights offloaded, KV cache freed).
Two phases: training (the engine asleep when rollout.sleep) and generation (the trainer's state resident,
the engine awake). The peak is the larger; the plan fits when it is at most the card's memory.
Estimates from arithmetic, not measurements: allocator fragmentation, CUDA context and DeepSpeed's buffers
add a few GB (`HEADROOM_GB`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

GB = 1e9
DTYPE_BYTES = {"bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2, "fp32": 4, "float32": 4}
MAX_LIVE_PARAMETERS = 1e9       # DeepSpeed's default stage3_max_live_parameters
HEADROOM_GB = 3.0               # CUDA context, allocator fragmentation, communication buffers
LORA_SHAPES = {"q_proj": ("hidden", "q_dim"), "k_proj": ("hidden", "kv_dim"), "v_proj": ("hidden", "kv_dim"),
               "o_proj": ("q_dim", "hidden"), "gate_proj": ("hidden", "intermediate"),
               "up_proj": ("hidden", "intermediate"), "down_proj": ("intermediate", "hidden")}


@dataclass(frozen=True)
class Architecture:
    """A decoder-only transformer (Llama / Qwen2 layout: GQA attention, gated MLP, RMSNorm)."""
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool                       # the LM head is the embedding matrix
    attention_bias: bool = False     # Qwen2: biases on q, k, v
    head_dim: int | None = None      # None: hidden / heads

    @property
    def head_size(self) -> int:
        return self.head_dim or self.hidden // self.heads

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_size

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_size

    def layer_params(self) -> int:
        attention = 2 * self.hidden * self.q_dim + 2 * self.hidden * self.kv_dim
        bias = self.q_dim + 2 * self.kv_dim if self.attention_bias else 0
        return attention + bias + 3 * self.hidden * self.intermediate + 2 * self.hidden

    def params(self) -> int:
        embedding = self.vocab * self.hidden
        return self.layers * self.layer_params() + embedding * (1 if self.tied else 2) + self.hidden

    def lora_params(self, rank: int, targets: list[str]) -> int:
        unknown = sorted(set(targets) - set(LORA_SHAPES))
        if unknown:
            raise ValueError(f"LoRA targets {unknown} are not linear layers of a Llama/Qwen2 block "
                             f"(known: {', '.join(LORA_SHAPES)})")
        return self.layers * sum(rank * (getattr(self, LORA_SHAPES[t][0]) + getattr(self, LORA_SHAPES[t][1]))
                                 for t in targets)

    def activation_elements(self) -> int:
        """Elements one decoder layer keeps per token for backward (module docstring)."""
        return 4 * self.hidden + 2 * self.q_dim + 2 * self.kv_dim + 4 * self.intermediate

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        return 2 * self.layers * self.kv_dim * dtype_bytes


def _qwen25(layers, hidden, intermediate, heads, kv_heads, vocab, tied):
    return Architecture(layers, hidden, intermediate, heads, kv_heads, vocab, tied, attention_bias=True)


# The published config.json values (Hugging Face hub); an -Instruct model has its base model's architecture.
BUILTIN = {
    "qwen2.5-0.5b": _qwen25(24, 896, 4864, 14, 2, 151936, True),
    "qwen2.5-1.5b": _qwen25(28, 1536, 8960, 12, 2, 151936, True),
    "qwen2.5-3b": _qwen25(36, 2048, 11008, 16, 2, 151936, True),
    "qwen2.5-7b": _qwen25(28, 3584, 18944, 28, 4, 152064, False),
    "llama-3-8b": Architecture(32, 4096, 14336, 32, 8, 128256, False),
    "smollm2-135m": Architecture(30, 576, 1536, 9, 3, 49152, True),
    "tiny-random-llama": Architecture(2, 64, 128, 4, 2, 49152, False),   # core.models.tiny_random_llama
}
ALIASES = {"meta-llama-3-8b": "llama-3-8b", "llama-3.1-8b": "llama-3-8b", "meta-llama-3.1-8b": "llama-3-8b"}


def builtin_key(model: str) -> str | None:
    """'Qwen/Qwen2.5-7B-Instruct' -> 'qwen2.5-7b'; None when the table has no such family/size."""
    name = model.rstrip("/").rsplit("/", 1)[-1].lower()
    for suffix in ("-instruct", "-chat"):
        name = name.removesuffix(suffix)
    name = ALIASES.get(name, name)
    return name if name in BUILTIN else None


def from_config_json(data: dict) -> Architecture:
    """An Architecture from a transformers config.json (Llama, Qwen2, Mistral field names)."""
    text = data.get("text_config", data)   # multimodal configs nest the language model's
    heads = text["num_attention_heads"]
    return Architecture(text["num_hidden_layers"], text["hidden_size"], text["intermediate_size"], heads,
                        text.get("num_key_value_heads") or heads, text["vocab_size"],
                        bool(data.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
                        bool(text.get("attention_bias", text.get("model_type") == "qwen2")),
                        text.get("head_dim"))


def architecture(model: str, key: str = "policy.model") -> Architecture:
    """`model` as the commands take it: a local dir (its config.json), a name in the built-in table, or an HF id
    whose config is in the local HF cache. Offline: nothing is downloaded."""
    local = Path(model).expanduser() / "config.json"
    if local.is_file():
        return from_config_json(json.loads(local.read_text()))
    name = builtin_key(model)
    if name is not None:
        return BUILTIN[name]
    try:
        from huggingface_hub import try_to_load_from_cache
        cached = try_to_load_from_cache(model, "config.json")
    except (ImportError, ValueError):   # not a repo id (e.g. a missing path): the error below says what is accepted
        cached = None
    if isinstance(cached, str):
        return from_config_json(json.loads(Path(cached).read_text()))
    raise ValueError(f"{key}={model}: no architecture for the memory plan: not a local dir with a config.json, not "
                     f"in the HF cache and not built in ({', '.join(sorted(BUILTIN))}, and their -Instruct models)")


@dataclass
class TrainedModel:
    """A model a rank holds: `mode` full (every weight trained), lora (adapters trained) or frozen."""
    arch: Architecture
    dtype: str
    mode: str = "full"
    zero_stage: int = 0
    lora_r: int = 16
    lora_targets: list[str] = field(default_factory=lambda: list(LORA_SHAPES))

    @property
    def bytes(self) -> int:
        if self.dtype not in DTYPE_BYTES:
            raise ValueError(f"dtype {self.dtype!r}: one of {', '.join(DTYPE_BYTES)}")
        return DTYPE_BYTES[self.dtype]

    def trained_params(self) -> int:
        return {"full": self.arch.params(), "lora": self.arch.lora_params(self.lora_r, self.lora_targets),
                "frozen": 0}[self.mode]

    def weights(self, world: int) -> float:
        total = self.arch.params() + (self.trained_params() if self.mode == "lora" else 0)
        if self.zero_stage < 3:
            return total * self.bytes
        return total * self.bytes / world + min(total, MAX_LIVE_PARAMETERS) * self.bytes

    def gradients(self, world: int) -> float:
        return self.trained_params() * self.bytes / (world if self.zero_stage >= 2 else 1)

    def optimizer(self, world: int) -> float:
        per_param = 12 if self.bytes == 2 else 8
        return self.trained_params() * per_param / (world if self.zero_stage >= 1 else 1)


def activation_bytes(arch: Architecture, tokens: int, dtype_bytes: int, checkpointing: bool) -> float:
    """What a training micro-batch of `tokens` tokens keeps for backward (module docstring)."""
    per_layer = arch.activation_elements() * dtype_bytes * tokens
    if checkpointing:   # every layer's input, plus one layer's full set while it is recomputed
        return arch.layers * arch.hidden * dtype_bytes * tokens + per_layer
    return arch.layers * per_layer


def logit_bytes(arch: Architecture, positions: int, dtype_bytes: int) -> float:
    """Full-vocabulary logits of `positions` completion positions: the LM head's output and its gradient."""
    return positions * arch.vocab * 2 * dtype_bytes


def head_params(num_heads: int, inputs: int, hidden: int) -> int:
    """prm.model.EnsembleHeads: K MLPs inputs -> hidden -> hidden -> 1 (weights and biases)."""
    return num_heads * (inputs * hidden + hidden + hidden * hidden + hidden + hidden + 1)


@dataclass
class Item:
    name: str
    gb: float                            # GB (1e9 bytes) on one GPU
    phases: tuple[str, ...]              # training and/or generation
    lowered_by: str


@dataclass
class MemoryPlan:
    items: list[Item]
    gpu_memory_gb: float
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)   # not a size: a setting that cannot work (no KV cache)

    def phase_gb(self, phase: str) -> float:
        return sum(i.gb for i in self.items if phase in i.phases) + HEADROOM_GB

    @property
    def peak_phase(self) -> str:
        return max(("training", "generation"), key=self.phase_gb)

    @property
    def peak_gb(self) -> float:
        return self.phase_gb(self.peak_phase)

    @property
    def fits(self) -> bool:
        return self.peak_gb <= self.gpu_memory_gb and not self.problems

    def largest(self) -> Item:
        return max((i for i in self.items if self.peak_phase in i.phases), key=lambda i: i.gb)

    def table(self) -> str:
        rows = ["| item | GB | held during | lowered by |", "|---|---|---|---|"]
        rows += [f"| {i.name} | {i.gb:.1f} | {' + '.join(i.phases)} | {i.lowered_by} |" for i in self.items]
        rows.append(f"| headroom (CUDA context, fragmentation, buffers) | {HEADROOM_GB:.1f} | both | — |")
        for phase in ("training", "generation"):
            rows.append(f"| **{phase} peak** | **{self.phase_gb(phase):.1f}** | | |")
        return "\n".join(rows + [f"- {n}" for n in self.notes])

    def advice(self) -> str:
        """One line: fits, or what is over and the setting that lowers the largest item."""
        if self.fits:
            return f"fits: peak {self.peak_gb:.1f} GB ({self.peak_phase}) of {self.gpu_memory_gb:.0f} GB per GPU"
        if self.problems:
            return "does not fit: " + "; ".join(self.problems)
        item = self.largest()
        return (f"does not fit: {self.peak_phase} peak {self.peak_gb:.1f} GB > {self.gpu_memory_gb:.0f} GB per GPU; "
                f"the largest item is {item.name} ({item.gb:.1f} GB): lower it with {item.lowered_by}")
