"""EnsemblePRM: one causal-LM backbone + K independent MLP heads scored at step separators (docs/method.md, Ensemble PRM).

Batches prm.batching: padded, length-bucketed or packed (cfg.batch_layout, training only; scoring sorts
        by length and pads, which wastes little): same features, loss and gradients, fewer pad tokens.
Input   chat template, question as the user turn, assistant turn `step1 <sep> step2 <sep> ... stepN <sep>`.
        The separator `<extra_0>` is added to the tokenizer when missing (embedding initialised from the
        blank-line token). Step positions are recorded while the ids are built, so a separator that
        happens to occur inside the question (or a step's text) is never scored.
Heads   K MLPs H -> 128 -> 128 -> 1 (ReLU) stored as batched weights [K, in, out]; they run only on
        the gathered separator hidden states, so K = 32 costs about what K = 1 does.
Output  per head logit z[e, i]; p = sigmoid(z); step reward = mean_e p, uncertainty = std_e p
        (unbiased, N - 1, as ActivePRM; K = 1 gives exactly 0).
Modes   full (everything trains), lora (peft adapters on the backbone), frozen (backbone frozen;
        features can be cached by prm.features and the heads train alone).
Device  cfg.device (auto = cuda:LOCAL_RANK with a GPU, else cpu | cpu | cuda | cuda:N) holds the
        backbone and heads; collate builds on CPU and hands the batch over on the model's device; scores
        come back as CPU floats. A saved PRM loads on any device (`load(path, device=...)`: the heads are
        read to CPU and copied over).
save()  `prm.json` (config) + `heads.safetensors` (heads and their frozen initial copy) + the backbone:
        full -> `backbone/` (save_pretrained, with the tokenizer); lora -> `adapter/` (peft) on top of
        the named backbone; frozen -> the backbone name only: rebuilding it (and the separator row,
        derived deterministically from the blank-line token) gives the same weights.
heads_only  `EnsemblePRM.heads_only(cfg, hidden_size)` (or `load(path, heads_only=True)`): the K heads
        without any backbone, for the frozen mode on cached separator features (prm.features). It
        trains and scores through the same forward / PRMLearner.update as every other mode, in
        seconds on CPU; anything that needs tokens (encode, separator_features) raises.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from prm import batching
from prm.batching import PRMBatch  # noqa: F401  (re-exported: prm.model.PRMBatch)
from prm.config import PRMConfig, StepFeatures
from prm.logprob_columns import LOGPROB_FLOOR  # noqa: F401  (re-exported: prm.model.LOGPROB_FLOOR)
from prm.logprob_columns import ReferenceColumns, reference_step_columns, step_columns
from core.config import resolve_device
from core.models import load_model
from prm.selection import head_mean_std


@dataclass
class StepScores:
    """Scores of one trajectory: per step the ensemble mean (the step reward) and std (uncertainty)."""
    mean: list[float]
    std: list[float]
    forward_tokens: int = 0   # token positions its scoring ran through backbones, each one counted (docs/search.md)


class EnsembleHeads(nn.Module):
    """K independent MLPs H -> d -> d -> 1, vectorised: weights [K, in, out], one batched matmul a layer."""

    def __init__(self, num_heads: int, in_dim: int, hidden: int = 128, seed: int = 0):
        super().__init__()
        dims = [(in_dim, hidden), (hidden, hidden), (hidden, 1)]
        gen = torch.Generator().manual_seed(seed)
        for n, (fan_in, fan_out) in enumerate(dims, start=1):
            weight = torch.randn(num_heads, fan_in, fan_out, generator=gen) / (2 * math.sqrt(fan_in))
            setattr(self, f"w{n}", nn.Parameter(weight))
            setattr(self, f"b{n}", nn.Parameter(torch.zeros(num_heads, 1, fan_out)))
        # Frozen copy of the initial heads: the anchor of the Eq. 4 regulariser (saved with the heads).
        for name, p in list(self.named_parameters()):
            self.register_buffer(f"{name}_init", p.detach().clone())
        self.num_heads = num_heads

    def forward(self, x: torch.Tensor, with_penalty: bool = False):
        """x [N, H] -> logits [K, N]; with_penalty: (logits, anchor_penalty()), the penalty taken here
        because ZeRO-3 holds this module's gathered weights only during its own forward."""
        h = torch.relu(torch.einsum("nh,khd->knd", x, self.w1) + self.b1)
        h = torch.relu(torch.bmm(h, self.w2) + self.b2)
        logits = (torch.bmm(h, self.w3) + self.b3).squeeze(-1)
        return (logits, self.anchor_penalty()) if with_penalty else logits

    def anchor_penalty(self) -> torch.Tensor:
        """mean((phi - phi_init)^2) over every head parameter, pooled."""
        sq, n = 0.0, 0
        for name, p in self.named_parameters():
            sq = sq + ((p - getattr(self, f"{name}_init")) ** 2).sum()
            n += p.numel()
        return sq / n


class EnsemblePRM(nn.Module):
    def __init__(self, cfg: PRMConfig, backbone_dir: str | None = None):
        super().__init__()
        self.cfg = cfg
        lm, tok = load_model(backbone_dir or cfg.backbone, cfg.dtype, seed=cfg.seed)
        self.tokenizer = tok
        self.sep_id = self._ensure_separator(lm, tok, cfg.sep_token)
        self._lm = [lm]                        # kept for save_pretrained; not a submodule (lm_head unused)
        body = lm.base_model                   # the transformer without the LM head
        if cfg.train_mode == "lora":
            from peft import LoraConfig, get_peft_model
            body = get_peft_model(body, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                                                   target_modules=list(cfg.lora_targets)))
        elif cfg.train_mode == "frozen":
            body.requires_grad_(False)
            body.eval()
        elif cfg.train_mode != "full":
            raise ValueError(f"train_mode must be full, lora or frozen, got '{cfg.train_mode}'")
        self.body = body
        self._reference = [None]               # hidden_policy_logprob: the frozen initial backbone (not a submodule)
        if cfg.step_features == StepFeatures.hidden_policy_logprob and cfg.train_mode != "frozen":
            self._reference = [self._frozen_reference(cfg, tok)]   # its own LM head reads the step's tokens
            self.reference_columns = ReferenceColumns()   # its columns, once per item (prm.logprob_columns)
        elif reads_logprobs(cfg):              # the backbone's own LM head reads the step's tokens
            self.lm_head = lm.get_output_embeddings()
            if cfg.train_mode != "full":
                self.lm_head.requires_grad_(False)
        self.hidden_size = lm.config.hidden_size
        self.heads = EnsembleHeads(cfg.num_heads, feature_dim(cfg, self.hidden_size), cfg.head_hidden, seed=cfg.seed)
        self._prompt_cache: dict[str, list[int]] = {}
        self.backbone_runs = 0                 # backbone passes over a batch so far (score's compute accounting)
        self.to(resolve_device(cfg.device))  # heads are built on CPU from a CPU generator: same init on every device

    @classmethod
    def _frozen_reference(cls, cfg: PRMConfig, tok):
        """prm.backbone as loaded (also when this PRM resumes from a trained backbone), in eval mode and
        without gradients; the same separator row as the trained copy started from."""
        ref, ref_tok = load_model(cfg.backbone, cfg.dtype, seed=cfg.seed)
        cls._ensure_separator(ref, ref_tok, cfg.sep_token)
        if ref.get_input_embeddings().weight.shape[0] < len(tok):
            raise ValueError(f"prm.step_features=hidden_policy_logprob: {cfg.backbone} has a smaller vocabulary "
                             f"than the PRM's tokenizer ({len(tok)})")
        return ref.requires_grad_(False).eval()

    @classmethod
    def heads_only(cls, cfg: PRMConfig, hidden_size: int) -> "EnsemblePRM":
        """The K heads alone (no backbone, no tokenizer): frozen mode on cached features only."""
        if cfg.train_mode != "frozen":
            raise ValueError(f"a heads-only PRM needs train_mode=frozen (cached features), got '{cfg.train_mode}'")
        prm = cls.__new__(cls)
        nn.Module.__init__(prm)
        prm.cfg, prm.tokenizer, prm.sep_id, prm._lm, prm.body = cfg, None, None, [None], None
        prm.hidden_size = hidden_size
        prm.heads = EnsembleHeads(cfg.num_heads, feature_dim(cfg, hidden_size), cfg.head_hidden, seed=cfg.seed)
        prm._prompt_cache = {}
        prm.backbone_runs = 0
        return prm.to(resolve_device(cfg.device))

    @property
    def device(self) -> torch.device:
        """Where the weights are (DeepSpeed may have placed them, not cfg.device): batches go there."""
        return self.heads.w1.device

    @property
    def has_backbone(self) -> bool:
        return self.body is not None

    def _need_backbone(self, what: str) -> None:
        if self.body is None:
            raise RuntimeError(f"{what} needs the backbone, but this PRM is heads-only: every item must have "
                               "cached separator features (prm.features.FeatureCache)")

    # ------------------------------------------------------------------ input building
    @staticmethod
    def _ensure_separator(lm, tok, sep_token: str) -> int:
        if sep_token in tok.get_vocab():
            return tok.convert_tokens_to_ids(sep_token)
        tok.add_special_tokens({"additional_special_tokens": [sep_token]}, replace_extra_special_tokens=False)
        sep_id = tok.convert_tokens_to_ids(sep_token)
        if lm.get_input_embeddings().weight.shape[0] <= sep_id:
            lm.resize_token_embeddings(len(tok), mean_resizing=False)
        blank = tok("\n\n", add_special_tokens=False).input_ids
        with torch.no_grad():  # the new row starts as the blank-line token: a natural step boundary
            emb = lm.get_input_embeddings().weight
            emb[sep_id] = emb[blank].mean(0)
            out = lm.get_output_embeddings()
            if out is not None and out.weight.data_ptr() != emb.data_ptr():
                out.weight[sep_id] = out.weight[blank].mean(0)
        return sep_id

    def _prompt_ids(self, question: str) -> list[int]:
        if question not in self._prompt_cache:
            system = [] if self.cfg.system_prompt is None else [{"role": "system", "content": self.cfg.system_prompt}]
            text = self.tokenizer.apply_chat_template(system + [{"role": "user", "content": question}],
                                                      tokenize=False, add_generation_prompt=True)
            self._prompt_cache[question] = self.tokenizer(text, add_special_tokens=False).input_ids
            if len(self._prompt_cache) > 4096:
                self._prompt_cache.pop(next(iter(self._prompt_cache)))
        return self._prompt_cache[question]

    def prompt_length(self, question: str) -> int:
        """Tokens before the first step (where step 0's text begins)."""
        return len(self._prompt_ids(question))

    def encode(self, question: str, steps: list[str], max_length: int | None = None) -> tuple[list[int], list[int]]:
        """Token ids and the separator position of each step; steps whose separator would fall past
        max_length are dropped (so fewer positions than steps)."""
        self._need_backbone("encode")
        ids = list(self._prompt_ids(question))
        positions: list[int] = []
        step_ids = self.tokenizer(list(steps), add_special_tokens=False).input_ids if steps else []
        for piece in step_ids:
            if max_length is not None and len(ids) + len(piece) + 1 > max_length:
                break
            ids += piece + [self.sep_id]
            positions.append(len(ids) - 1)
        return ids, positions

    def collate(self, encoded: list[tuple[list[int], list[int]]], n_steps: list[int] | None = None,
                layout: str = "padded", questions: list[str] | None = None) -> PRMBatch:
        """Token batch in `layout` (padded | bucketed | packed, prm.batching) on the model's device;
        step_mask width = max number of steps (n_steps, default scored ones). step_features=hidden_logprob
        needs each item's `questions` (where its steps begin)."""
        firsts, columns, fresh = None, None, None
        if reads_logprobs(self.cfg):
            if questions is None:
                raise ValueError(f"prm.step_features={self.cfg.step_features}: collate needs the items' questions")
            firsts = [self.prompt_length(q) for q in questions]
        if self._reference[0] is not None:
            columns, fresh = self.policy_columns(encoded, firsts, layout)
        batch = batching.build(encoded, self.tokenizer.pad_token_id, layout, self.cfg.pack_tokens,
                               n_steps, firsts, columns)
        batch.columns_fresh = fresh
        return batch.to(self.device)

    def policy_columns(self, encoded: list[tuple[list[int], list[int]]], firsts: list[int],
                       layout: str = "padded") -> tuple[list[torch.Tensor], list[bool]]:
        """hidden_policy_logprob with a trained backbone: each item's [n_steps, 2] columns under the frozen
        initial backbone, and which items this call ran it for (ReferenceColumns: once per item)."""
        def build(items, starts):
            return batching.build(items, self.tokenizer.pad_token_id, layout, self.cfg.pack_tokens,
                                  firsts=starts).to(self.device)
        return self.reference_columns.columns(self._reference[0], encoded, firsts, build)

    # ------------------------------------------------------------------ forward
    def separator_features(self, batch: PRMBatch) -> torch.Tensor:
        """Backbone pass, then gather the last hidden state at the separators: [N, H]."""
        self._need_backbone("separator_features")
        if batch.parts is not None:  # bucketed: sub-batch by sub-batch, then back in batch order
            return torch.cat([self.separator_features(part) for part in batch.parts])[batch.order]
        # use_cache=False: no KV cache to build, and transformers only reads packed rows' position ids
        # (the block-diagonal mask) when there is neither a 2D mask nor a cache
        hidden = self.body(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                           position_ids=batch.position_ids, use_cache=False).last_hidden_state
        self.backbone_runs += 1
        feats = hidden[batch.rows, batch.positions]
        if reads_logprobs(self.cfg):
            feats = torch.cat([feats, self.step_logprobs(batch, hidden).to(feats.dtype)], -1)
        return feats

    def step_logprobs(self, batch: PRMBatch, hidden: torch.Tensor) -> torch.Tensor:
        """[N, 2]: log min and log mean token probability of each scored step's tokens (from its start to
        its separator) under the backbone's LM head, on the same forward pass (prm.logprob_columns).
        hidden_policy_logprob with a trained backbone: under the frozen initial backbone instead, the
        columns collate put in the batch (policy_columns: computed once per item)."""
        if batch.starts is None:
            raise ValueError(f"prm.step_features={self.cfg.step_features} needs step starts in the batch "
                             "(collate(questions=...))")
        if self._reference[0] is None:
            return step_columns(batch, hidden, self.lm_head)
        if batch.columns is not None:
            return batch.columns
        self.backbone_runs += 1                # a batch built without collate: the second backbone runs here
        return reference_step_columns(self._reference[0], batch)

    def forward(self, batch: PRMBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-head logits [K, B, S] (zero at padding slots) and the anchor penalty (a scalar).

        The penalty is computed inside the heads' forward, so it also works where ZeRO-3 only gathers
        a module's parameters during that module's forward."""
        feats = batch.features if batch.features is not None else self.separator_features(batch)
        flat, penalty = self.heads(feats.float(), with_penalty=True)     # heads run in fp32
        logits = flat.new_zeros((self.heads.num_heads, *batch.step_mask.shape))
        logits[:, batch.step_mask] = flat
        return logits, penalty

    @torch.no_grad()
    def score(self, questions: list[str], steps: list[list[str]], batch_size: int | None = None,
              features: list[torch.Tensor] | None = None) -> list[StepScores]:
        """Mean and std over heads of sigmoid(logit) per step. Length-bucketed: items are sorted by
        token length so each batch pads little; results come back in input order. `features`
        (from prm.features) skips the backbone for items whose cached features cover every step. Each
        item's forward_tokens: its token positions times the backbones its batch ran through (padding
        not counted; 0 for cached features), the frozen initial backbone of hidden_policy_logprob counted
        for the items it ran for (policy_columns: once per item). Identical items run once: a copy reads
        the first one's scores and ran nothing (a confident policy samples the same solution many times)."""
        batch_size = batch_size or self.cfg.batch_size
        was_training = self.training
        self.eval()
        out: list[StepScores | None] = [None] * len(questions)
        todo, first, copies = [], {}, []
        for i, (q, s) in enumerate(zip(questions, steps)):
            if features is not None and features[i] is not None and len(features[i]) == len(s):
                out[i] = _to_scores(self.heads(features[i].to(self.device).float()))
            elif (q, tuple(s)) in first:
                copies.append((i, first[q, tuple(s)]))
            else:
                first[q, tuple(s)] = i
                todo.append((i, self.encode(q, s)))
        todo.sort(key=lambda item: len(item[1][0]))
        for start in range(0, len(todo), batch_size):
            chunk = todo[start: start + batch_size]
            encoded, qs = [enc for _, enc in chunk], [questions[i] for i, _ in chunk]
            batch = self.collate(encoded, questions=qs)
            fresh = batch.columns_fresh or [False] * len(chunk)
            runs = self.backbone_runs
            logits, _ = self.forward(batch)
            runs = self.backbone_runs - runs
            for b, (i, (ids, pos)) in enumerate(chunk):
                out[i] = _to_scores(logits[:, b, : len(pos)], forward_tokens=len(ids) * (runs + fresh[b]))
        for i, j in copies:
            out[i] = StepScores(list(out[j].mean), list(out[j].std))
        self.train(was_training)
        return out  # type: ignore[return-value]

    def train(self, mode: bool = True):
        super().train(mode)
        if self.cfg.train_mode == "frozen" and self.body is not None:
            self.body.eval()  # a frozen backbone never leaves eval mode (no dropout drift vs its cached features)
        return self

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path, save_backbone: bool | None = None) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_backbone = self.cfg.train_mode == "full" if save_backbone is None else save_backbone
        if save_backbone:
            self._lm[0].save_pretrained(path / "backbone")
            self.tokenizer.save_pretrained(path / "backbone")
        if self.cfg.train_mode == "lora":
            self.body.save_pretrained(path / "adapter")
        tensors = {k: v.detach().float().contiguous() for k, v in self.heads.state_dict().items()}
        save_file(tensors, str(path / "heads.safetensors"))
        meta = {"config": asdict(self.cfg), "backbone_saved": bool(save_backbone), "hidden_size": self.hidden_size}
        (path / "prm.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def from_config(cls, cfg: PRMConfig) -> "EnsemblePRM":
        """What every command builds from its `prm` config: a fresh PRM, or with `prm.path` the saved one
        (its architecture: backbone, heads, train_mode, ...) on prm.device, trained and read with this
        run's settings (lr, thresholds, pos_weight, ...), so `prm.path=X prm.head_lr=...` means what it says."""
        if not cfg.path:
            return cls(cfg)
        return cls.load(cfg.path, device=cfg.device, **{k: getattr(cfg, k) for k in RUN_SETTINGS})

    @classmethod
    def load(cls, path: str | Path, heads_only: bool = False, device: str = "cpu", **overrides) -> "EnsemblePRM":
        """Rebuild a saved PRM on `device`; `overrides` replace config fields (e.g. train_mode='frozen' to
        fine-tune only the heads of a fully trained PRM). heads_only=True skips the backbone (frozen-mode
        PRMs: score/train on cached features only). The saved device is not reused: placement belongs
        to the machine that loads (a PRM trained on a GPU loads on a CPU-only one)."""
        path, device = Path(path), resolve_device(device)
        meta = json.loads((path / "prm.json").read_text())
        known = {f.name for f in fields(PRMConfig)}
        cfg = PRMConfig(**{**{k: v for k, v in meta["config"].items() if k in known}, "device": device})
        if heads_only:
            for key, value in overrides.items():
                setattr(cfg, key, value)
            cfg.path = str(path)
            prm = cls.heads_only(cfg, meta["hidden_size"])
            prm.heads.load_state_dict(load_file(str(path / "heads.safetensors")))  # CPU file -> copied to device
            return prm
        saved_mode = cfg.train_mode
        backbone_dir = str(path / "backbone") if meta["backbone_saved"] else None
        cfg.train_mode = "full" if saved_mode == "lora" else saved_mode  # adapters are attached below
        cfg.path = str(path)
        prm = cls(cfg, backbone_dir)
        if saved_mode == "lora":
            from peft import PeftModel
            prm.body = PeftModel.from_pretrained(prm.body, str(path / "adapter"), is_trainable=True)
            cfg.train_mode = "lora"
        prm.heads.load_state_dict(load_file(str(path / "heads.safetensors")))
        for key, value in overrides.items():
            setattr(cfg, key, value)
        if cfg.train_mode == "frozen":
            prm.body.requires_grad_(False)
            prm.body.eval()
        return prm.to(device)  # the peft adapter may have been attached on CPU


# PRMConfig fields that belong to the run, not to the saved model (EnsemblePRM.from_config)
RUN_SETTINGS = ("delta_pred", "delta_std", "reg_lambda", "lr", "head_lr", "weight_decay", "warmup_steps",
                "batch_size", "update_steps", "pos_weight", "threshold", "seed", "batch_layout", "pack_tokens",
                "zero_stage")


def reads_logprobs(cfg: PRMConfig) -> bool:
    """hidden_logprob and hidden_policy_logprob: the heads also read the step's 2 log-prob columns."""
    return cfg.step_features != StepFeatures.hidden


def feature_dim(cfg: PRMConfig, hidden_size: int) -> int:
    """Width of one step's feature vector: the hidden state, plus the 2 log-prob columns where read."""
    return hidden_size + (2 if reads_logprobs(cfg) else 0)


def _to_scores(logits: torch.Tensor, forward_tokens: int = 0) -> StepScores:
    """logits [K, n] -> StepScores (unbiased std over heads: exactly 0 for K = 1)."""
    mean, std = head_mean_std(torch.sigmoid(logits.float()))
    return StepScores(mean.tolist(), std.tolist(), forward_tokens)
