"""EnsemblePRM: heads, separators, scoring, save/load (tiny-random-llama: milliseconds)."""
import pytest
import torch

from prm.config import PRMConfig
from prm.model import EnsembleHeads, EnsemblePRM


def make_prm(**kw) -> EnsemblePRM:
    cfg = dict(backbone="tiny-random-llama", dtype="fp32", num_heads=4)
    cfg.update(kw)
    return EnsemblePRM(PRMConfig(**cfg))


@pytest.fixture(scope="module")
def prm():
    return make_prm()


def test_heads_init_std_and_zero_bias():
    heads = EnsembleHeads(num_heads=64, in_dim=400, hidden=128)
    assert abs(heads.w1.std().item() - 1 / (2 * 400 ** 0.5)) < 2e-3
    assert abs(heads.w2.std().item() - 1 / (2 * 128 ** 0.5)) < 2e-3
    assert all(float(b.detach().abs().sum()) == 0 for b in (heads.b1, heads.b2, heads.b3))
    assert heads.w1.shape == (64, 400, 128) and heads.w3.shape == (64, 128, 1)


def test_heads_are_independent_and_distinct():
    heads = EnsembleHeads(num_heads=3, in_dim=16)
    x = torch.randn(5, 16)
    before = heads(x)
    assert not torch.allclose(before[0], before[1])  # K heads not identical after init
    with torch.no_grad():
        heads.w1[1] += 0.5
        heads.b3[1] += 1.0
    after = heads(x)
    assert torch.equal(after[0], before[0]) and torch.equal(after[2], before[2])
    assert not torch.allclose(after[1], before[1])


def test_k32_equals_stacked_single_heads():
    big = EnsembleHeads(num_heads=32, in_dim=16)
    x = torch.randn(7, 16)
    stacked = []
    for e in range(32):
        single = EnsembleHeads(num_heads=1, in_dim=16)
        with torch.no_grad():
            for name, p in single.named_parameters():
                p.copy_(getattr(big, name)[e: e + 1])
        stacked.append(single(x)[0])
    torch.testing.assert_close(big(x), torch.stack(stacked), rtol=1e-5, atol=1e-6)


def test_penalty_zero_at_init_and_positive_after_change():
    heads = EnsembleHeads(num_heads=2, in_dim=8)
    assert float(heads.anchor_penalty()) == 0.0
    with torch.no_grad():
        heads.b1 += 1.0
    n = sum(p.numel() for p in heads.parameters())
    assert float(heads.anchor_penalty()) == pytest.approx(heads.b1.numel() / n)


def test_separator_added_with_blank_line_embedding(prm):
    tok = prm.tokenizer
    assert tok.convert_tokens_to_ids("<extra_0>") == prm.sep_id
    blank = tok("\n\n", add_special_tokens=False).input_ids
    emb = prm.body.get_input_embeddings().weight
    torch.testing.assert_close(emb[prm.sep_id], emb[blank].mean(0))


def test_separators_in_question_are_not_scored(prm):
    ids, positions = prm.encode("Is <extra_0> a trap <extra_0>?", ["step one", "step two"])
    sep_everywhere = [i for i, t in enumerate(ids) if t == prm.sep_id]
    assert len(sep_everywhere) == 4 and len(positions) == 2
    assert positions == sep_everywhere[-2:]
    scores = prm.score(["Is <extra_0> a trap <extra_0>?"], [["step one", "step two"]])
    assert len(scores[0].mean) == 2


def test_max_length_drops_steps_that_do_not_fit(prm):
    full_ids, full_pos = prm.encode("q", ["a b c"] * 5)
    ids, pos = prm.encode("q", ["a b c"] * 5, max_length=full_pos[2] + 1)
    assert pos == full_pos[:3] and len(ids) == full_pos[2] + 1


def test_score_is_batch_and_order_invariant(prm):
    qs = ["short", "a much longer question " * 5, "mid question"]
    ss = [["x"], ["a", "b", "c", "d"], ["p", "q"]]
    together = prm.score(qs, ss, batch_size=2)
    alone = [prm.score([q], [s])[0] for q, s in zip(qs, ss)]
    for a, b in zip(together, alone):
        assert [len(a.mean), len(a.std)] == [len(b.mean)] * 2
        torch.testing.assert_close(torch.tensor(a.mean), torch.tensor(b.mean), rtol=1e-4, atol=1e-5)
        assert all(0 <= m <= 1 for m in a.mean) and all(s >= 0 for s in a.std)


def test_identical_items_in_one_score_call_run_once(prm):
    """A confident policy samples the same solution many times: the backbone reads it once, every copy gets
    the first one's scores (what it would get alone, to fp32 reassociation) and reports no positions run."""
    seen = []
    hook = prm.body.register_forward_pre_hook(lambda m, a, kw: seen.append(int(kw["attention_mask"].sum())),
                                              with_kwargs=True)
    qs, ss = ["q1", "q2", "q1", "q1"], [["a", "b"], ["c"], ["a", "b"], ["a", "b"]]
    try:
        scores = prm.score(qs, ss, batch_size=8)
    finally:
        hook.remove()
    lengths = [len(prm.encode(q, s)[0]) for q, s in zip(qs, ss)]
    assert sum(seen) == lengths[0] + lengths[1]                   # q1's solution once, q2's once
    assert [s.forward_tokens for s in scores] == [lengths[0], lengths[1], 0, 0]
    assert scores[2] == scores[3] == scores[0].__class__(scores[0].mean, scores[0].std, 0)
    alone = prm.score(["q1"], [["a", "b"]])[0]
    torch.testing.assert_close(torch.tensor(scores[2].mean), torch.tensor(alone.mean), rtol=1e-4, atol=1e-5)


def test_k1_std_is_exactly_zero():
    scores = make_prm(num_heads=1).score(["q"], [["a", "b", "c"]])
    assert scores[0].std == [0.0, 0.0, 0.0]


def test_forward_logits_shape_and_padding(prm):
    batch = prm.collate([prm.encode("q", ["a", "b", "c"]), prm.encode("q2", ["a"])])
    logits, penalty = prm(batch)
    assert logits.shape == (4, 2, 3)
    assert torch.all(logits[:, 1, 1:] == 0) and float(penalty) == 0.0


def test_from_config_keeps_saved_model_and_takes_run_settings(tmp_path):
    """prm.path=X: the saved architecture and weights, but this run's training settings; no path: fresh."""
    saved = make_prm(num_heads=3, head_lr=1e-3, pos_weight=0.25, seed=5)
    with torch.no_grad():
        for p in saved.heads.parameters():
            p.add_(0.01 * torch.randn_like(p))
    saved.save(tmp_path / "prm")
    run = PRMConfig(backbone="tiny-random-llama", dtype="fp32", num_heads=8, head_lr=5e-3, pos_weight=1.0,
                    update_steps=2, path=str(tmp_path / "prm"))
    warm = EnsemblePRM.from_config(run)
    assert warm.cfg.num_heads == 3 and warm.cfg.head_lr == 5e-3 and warm.cfg.pos_weight == 1.0
    assert warm.cfg.update_steps == 2
    assert all(torch.equal(a, b) for a, b in zip(saved.heads.state_dict().values(), warm.heads.state_dict().values()))
    qs, ss = ["What is 2+2?"], [["2+2=4", "So 4"]]
    assert saved.score(qs, ss)[0].mean == warm.score(qs, ss)[0].mean
    run.path = None
    assert EnsemblePRM.from_config(run).cfg.num_heads == 8


@pytest.mark.parametrize("mode", ["frozen", "full", "lora"])
def test_save_load_identical_scores(tmp_path, mode):
    prm = make_prm(train_mode=mode, seed=3)
    with torch.no_grad():  # move every trainable weight away from its reproducible init
        for p in prm.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    qs, ss = ["What is 2+2?", "q"], [["2+2=4", "So 4"], ["x", "y", "z"]]
    before = prm.score(qs, ss)
    prm.save(tmp_path / "prm")
    if mode != "full":
        assert not (tmp_path / "prm" / "backbone").exists()
    loaded = EnsemblePRM.load(tmp_path / "prm")
    assert loaded.cfg.train_mode == mode
    after = loaded.score(qs, ss)
    for a, b in zip(before, after):
        assert a.mean == b.mean and a.std == b.std


def test_system_prompt_setting_shapes_the_input_and_is_saved(tmp_path):
    """prm.system_prompt=None keeps the template's default system turn; "" replaces it by an empty one
    (fewer tokens, no default text); the choice travels with the saved PRM."""
    default, empty = make_prm(), make_prm(system_prompt="")
    q = "What is 2 + 3?"
    d_text = default.tokenizer.decode(default._prompt_ids(q))
    e_text = empty.tokenizer.decode(empty._prompt_ids(q))
    assert "You are a helpful" in d_text and "You are a helpful" not in e_text
    assert q in e_text and len(empty._prompt_ids(q)) < len(default._prompt_ids(q))
    empty.save(tmp_path / "p")
    again = EnsemblePRM.load(tmp_path / "p")
    assert again.cfg.system_prompt == "" and again._prompt_ids(q) == empty._prompt_ids(q)
