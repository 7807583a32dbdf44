"""Where a run's files may live on a cluster: SQLite files on a node-local disk, checkpoints on the shared one.

    network_filesystem(path)              # 'nfs4', 'lustre', ... or None (/proc/mounts)
    check_shared_dir(out_dir, ranks)      # every rank sees the same directory (a clear error otherwise)
    snapshot_sqlite(db, dest)             # a consistent copy of a live SQLite file (into a checkpoint)
    restore_sqlite(snapshot, db)          # back onto the node-local path at resume, when that copy is missing or older

Why: the judge ledger is an SQLite file in WAL mode, which needs one host's shared memory and working
POSIX locks; on NFS or Lustre it fails with "database is locked" or worse. With several ranks (possibly
on several nodes) or a network out_dir, rl.online keeps it on a node-local path (trainer.local_dir) and
copies it into each round checkpoint, so a resume on another node starts from the labels the checkpoint
saw (labels paid after the last checkpoint on a node that is gone are paid again: nothing else is lost).
"""
from __future__ import annotations

import os
import secrets
import shutil
import socket
import sqlite3
import tempfile
import time
from pathlib import Path

NETWORK_FILESYSTEMS = {"nfs", "nfs4", "lustre", "cifs", "smb3", "smbfs", "gpfs", "beegfs", "ceph", "glusterfs",
                       "fuse.glusterfs", "fuse.sshfs", "fuse.s3fs", "fuse.gcsfuse", "9p", "wekafs", "panfs", "afs"}


def network_filesystem(path: str | Path, mounts: str | None = None) -> str | None:
    """The filesystem type of `path`'s mount when it is a network one, else None. `mounts`: /proc/mounts's
    text (read when None; a system without it has no network mounts we can see)."""
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            return None
    target = Path(path).resolve()
    best, kind = -1, None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = Path(fields[1].replace("\\040", " "))
        if (target == point or point in target.parents) and len(point.parts) > best:
            best, kind = len(point.parts), fields[2]
    return kind if kind in NETWORK_FILESYSTEMS else None


def default_local_dir(out_dir: str | Path) -> Path:
    """A node-local directory of this run: $TMPDIR/prmloop-<user>/<out_dir's name>-<hash of its path>."""
    import hashlib
    resolved = str(Path(out_dir).resolve())
    tag = hashlib.sha256(resolved.encode()).hexdigest()[:12]
    user = os.environ.get("USER", str(os.getuid()) if hasattr(os, "getuid") else "user")
    return Path(tempfile.gettempdir()) / f"prmloop-{user}" / f"{Path(resolved).name}-{tag}"


def check_shared_dir(path: str | Path, ranks, key: str = "trainer.out_dir") -> None:
    """Every rank must see the same `path` (checkpoint shards, metrics): rank 0 writes a random token there,
    every rank reads it back; a rank that cannot is named with its host, on every rank. All ranks call it."""
    if ranks.world == 1:
        return
    path = Path(path)
    token = ranks.broadcast(secrets.token_hex(8) if ranks.is_main else None)
    probe = path / f".shared_dir_probe_{token}"
    if ranks.is_main:
        probe.write_text(token)
    ranks.barrier()
    try:
        seen = probe.read_text() == token
    except OSError:
        seen = False
    everyone = ranks.gather((seen, socket.gethostname(), str(path.resolve())))
    ranks.barrier()
    if ranks.is_main:
        probe.unlink(missing_ok=True)
    blind = [f"rank {r} on {host} (its {key} is {where})" for r, (ok, host, where) in enumerate(everyone) if not ok]
    if blind:
        raise RuntimeError(f"{key}={path}: rank 0 on {everyone[0][1]} wrote {probe.name} into {everyone[0][2]} but "
                           f"{'; '.join(blind)} cannot read it. Every rank writes its checkpoint shards there and "
                           f"rank 0 renames the round: give every rank the same {key}, on a filesystem every node "
                           f"mounts")


def snapshot_sqlite(db: str | Path, dest: str | Path) -> None:
    """A consistent copy of a live SQLite database (WAL included) through SQLite's backup API."""
    source, target = sqlite3.connect(db), sqlite3.connect(dest)
    try:
        source.backup(target)
    finally:
        target.close()
        source.close()


def _rows(db: Path, table: str) -> int:
    con = sqlite3.connect(db)
    try:
        return con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    finally:
        con.close()


def restore_sqlite(snapshot: str | Path, db: str | Path, table: str) -> str:
    """At resume: put a checkpoint's `snapshot` at `db` when `db` is missing or holds fewer `table` rows (a
    stale copy from another node, kept beside it, never deleted). Returns what was done, for the log."""
    snapshot, db = Path(snapshot), Path(db)
    if not snapshot.is_file():
        return "no ledger copy in the checkpoint"
    if db.is_file():
        have, saved = _rows(db, table), _rows(snapshot, table)
        if have >= saved:
            return f"kept {db} ({have} labels; the checkpoint's copy has {saved})"
        aside = db.with_name(f"{db.name}.stale-{int(time.time())}")
        for suffix in ("", "-wal", "-shm"):
            if Path(f"{db}{suffix}").exists():
                os.replace(f"{db}{suffix}", f"{aside}{suffix}")
    db.parent.mkdir(parents=True, exist_ok=True)
    tmp = db.with_name(db.name + ".restore")
    shutil.copyfile(snapshot, tmp)
    os.replace(tmp, db)
    return f"restored {db} from {snapshot} ({_rows(db, table)} labels)"
