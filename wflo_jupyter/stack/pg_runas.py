"""Running PostgreSQL's binaries as root, which postgres refuses: as root they run in a user
namespace (``unshare --map-user``) that maps an unprivileged uid onto root, so the data stays
owned by root and no account is created; where user namespaces are unavailable, as
pgserver's ``pgserver`` system account, which then owns the data directory."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import stat
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wflo_jupyter.stack.errors import StackError, one_line

PG_SYSTEM_ACCOUNT = "pgserver"  # pgserver's own convention for root without user namespaces


@dataclass(frozen=True)
class PgRunAs:
    """How PostgreSQL's binaries are run: directly, in a user namespace, or as an account."""

    mode: str  # "direct" | "userns" | "account"
    prefix: tuple[str, ...] = ()
    uid: int | None = None  # "account" mode: run as this uid/gid
    gid: int | None = None

    def owner(self) -> tuple[int, int]:
        """The uid and gid that own the data directory."""
        if self.uid is not None and self.gid is not None:
            return self.uid, self.gid
        return os.geteuid(), os.getegid()

    def popen_kwargs(self) -> dict[str, Any]:
        """What ``subprocess`` needs to run a binary as this account (none otherwise)."""
        if self.uid is None:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def pg_runas(bindir: Path, progress: Callable[[str], None]) -> PgRunAs:
    """How to run postgres binaries here: postgres refuses to run as root."""
    if os.geteuid() != 0:
        return PgRunAs("direct")
    unshare = shutil.which("unshare")
    if unshare is not None:
        # Map an unprivileged uid that has a passwd entry (initdb looks its name up) onto
        # root: postgres sees a non-root owner of its data, the files stay root's.
        try:
            inner = pwd.getpwnam("nobody")
            ids = (inner.pw_uid, inner.pw_gid)
        except KeyError:
            ids = next(((e.pw_uid, e.pw_gid) for e in pwd.getpwall() if e.pw_uid > 0), (0, 0))
        prefix = (unshare, "--user", f"--map-user={ids[0]}", f"--map-group={ids[1]}")
        if ids[0] > 0:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                probe = subprocess.run(
                    [*prefix, str(bindir / "postgres"), "--version"],
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=10,
                    check=False,
                )
                if probe.returncode == 0:
                    return PgRunAs("userns", prefix=prefix)
    # No user namespaces (e.g. a container without CAP_SYS_ADMIN): pgserver's way, a
    # dedicated system account that owns the data directory.
    try:
        account = pwd.getpwnam(PG_SYSTEM_ACCOUNT)
    except KeyError:
        progress(f"creating system account '{PG_SYSTEM_ACCOUNT}' to run postgres...")
        try:
            subprocess.run(
                ["useradd", "--system", "--user-group", "--no-create-home",
                 "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin",
                 PG_SYSTEM_ACCOUNT],
                capture_output=True, check=True, timeout=30,
            )  # fmt: skip
            account = pwd.getpwnam(PG_SYSTEM_ACCOUNT)
        except (OSError, subprocess.SubprocessError, KeyError) as exc:
            raise StackError(
                "postgres: refuses to run as root, user namespaces are unavailable and "
                f"creating the '{PG_SYSTEM_ACCOUNT}' account failed: {one_line(exc)}; "
                "run wflo as a normal user or set WFLO_DATABASE_URL"
            ) from exc
    return PgRunAs("account", uid=account.pw_uid, gid=account.pw_gid)


def hand_over(
    pgdata: Path, bindir: Path, runas: PgRunAs, progress: Callable[[str], None]
) -> tuple[int, int]:
    """Make ``pgdata`` (0700) belong to whoever ``runas`` runs postgres as, and let an account
    reach it and PostgreSQL's ``share`` directory; return that owner's uid and gid."""
    uid, gid = runas.owner()
    if runas.mode == "account":
        _ensure_traversable(pgdata, uid, gid, progress)
        _ensure_traversable(bindir.parent / "share", uid, gid, progress)
    _chown_tree(pgdata, uid, gid)
    pgdata.chmod(0o700)
    return uid, gid


def _ensure_traversable(path: Path, uid: int, gid: int, progress: Callable[[str], None]) -> None:
    """Let ``uid`` search every ancestor directory of ``path`` (adds o+x where missing)."""
    for parent in reversed(path.absolute().parents):
        st = parent.stat()
        if st.st_uid == uid:
            bit = stat.S_IXUSR
        elif st.st_gid == gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            progress(f"allowing '{PG_SYSTEM_ACCOUNT}' to traverse {parent} (+x)")
            parent.chmod(stat.S_IMODE(st.st_mode) | bit)


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    st = root.stat()
    if (st.st_uid, st.st_gid) == (uid, gid):
        return
    os.chown(root, uid, gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for entry in dirnames + filenames:
            os.lchown(os.path.join(dirpath, entry), uid, gid)
