"""prm_update names which PRM the policy's process rewards come from; the re-score is its own timed phase."""
from rl.online import run
from tests.test_rl_loop import tiny_config


def test_post_update_rewards_rescore_in_their_own_phase(tmp_path):
    pre = run(tiny_config(tmp_path / "pre", rounds=1, mode="all"))[0]
    post = run(tiny_config(tmp_path / "post", rounds=1, mode="all", prm_update="post_update_rewards"))[0]
    assert "timing/rescore" not in pre and "timing/rescore" in post
    assert pre["prm/loss"] == post["prm/loss"]                      # the same update, same labels
    assert pre["reward/process"] != post["reward/process"]          # rewards read from the updated PRM
