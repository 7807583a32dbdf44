"""Two ranks, each given its own out_dir or the same one: core.storage.check_shared_dir passes or names the
rank that cannot see rank 0's probe. Usage: torchrun --nproc_per_node 2 -m tests.shared_dir_probe <base> same|differ"""
import sys
from pathlib import Path

from core.distributed import Ranks, init_distributed
from core.storage import check_shared_dir

if __name__ == "__main__":
    init_distributed(timeout_min=2)
    ranks = Ranks.from_env()
    out = Path(sys.argv[1]) / ("shared" if sys.argv[2] == "same" else f"rank{ranks.rank}")
    out.mkdir(parents=True, exist_ok=True)
    try:
        check_shared_dir(out, ranks)
    except RuntimeError as err:
        print(f"rank {ranks.rank} refused: {err}", flush=True)
        sys.exit(3)
    print(f"rank {ranks.rank} ok", flush=True)
