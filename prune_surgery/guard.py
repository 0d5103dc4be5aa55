"""Guards around writing OUT: one writer at a time, leftovers of killed runs, free disk space.

- **Lock**: a run holds ``flock`` on ``.NAME.prune-surgery.lock`` next to OUT while it writes; a
  second run into the same OUT is refused.  The kernel drops the lock when its process dies, so
  a killed run never blocks the next one.
- **Leftovers**: a run writes into ``.NAME.prune-surgery-PID.tmp`` next to OUT.  Under the lock,
  every such folder of the same OUT belongs to a dead run and is removed; those of other OUTs are
  removed when their process no longer exists, and named (with their size) when it does.
- **Space**: the plan knows every byte it writes; OUT's filesystem must have that much free.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import re
import shutil
from pathlib import Path
from typing import Callable, Iterator

from .errors import OutputError
from .render import human_bytes

Note = Callable[[str], None]
_LEFTOVER = re.compile(r"\.(?P<name>.+)\.prune-surgery-(?P<pid>\d+)\.(?P<kind>tmp|old)")
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def temp_name(out: Path, kind: str) -> Path:
    """The hidden sibling of `out` this process writes into (`kind` is "tmp" or "old")."""
    return out.parent / f".{out.name}.prune-surgery-{os.getpid()}.{kind}"


# -- the lock -------------------------------------------------------------------------------
@contextlib.contextmanager
def out_lock(out: Path) -> Iterator[None]:
    """Hold the write lock of `out` for the block, or refuse if another live run holds it."""
    path = out.parent / f".{out.name}.prune-surgery.lock"
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutputError(f"another prune-surgery run (pid {holder}) is writing {out}; "
                              "wait for it to finish or choose another output folder") from None
        try:  # the holder before us may have unlinked the file after we opened it: lock the live one
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # under the lock, so no other run can hold this inode
        os.close(fd)


# -- leftovers of killed runs ------------------------------------------------------------------
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def folder_bytes(path: Path) -> int:
    """Bytes of the regular files under `path` (0 if it vanished meanwhile)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def clean_leftovers(out: Path, note: Note) -> None:
    """Remove temporary folders of dead runs next to `out` (call with `out`'s lock held).

    A `.old` folder of `out` with no `out` beside it is the previous output of a run killed
    between its two renames (systems without an atomic exchange): it is put back as `out`.
    """
    if not out.parent.is_dir():
        return
    for entry in sorted(out.parent.iterdir()):
        match = _LEFTOVER.fullmatch(entry.name)
        if match is None or not entry.is_dir() or entry.is_symlink():
            continue
        ours, pid = match["name"] == out.name, int(match["pid"])
        if not ours and _alive(pid):
            note(f"{entry} ({human_bytes(folder_bytes(entry))}) belongs to running process {pid}; left alone")
            continue
        if ours and match["kind"] == "old" and not out.exists():
            os.replace(entry, out)
            note(f"restored {out} from {entry.name}, left by a run killed while replacing it")
            continue
        size = folder_bytes(entry)
        shutil.rmtree(entry, ignore_errors=True)
        note(f"removed {entry} ({human_bytes(size)}), left by run {pid} that no longer exists")


# -- the final rename ------------------------------------------------------------------------
def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def replace_folder(tmp: Path, out: Path) -> None:
    """Make the complete folder `tmp` become `out`; at every instant `out` is the old or the new one."""
    if out.exists() and _exchange(tmp, out):  # `tmp` now holds the previous output
        shutil.rmtree(tmp, ignore_errors=True)
        return
    old = temp_name(out, "old")
    if out.exists():
        os.replace(out, old)  # a kill here leaves `old`, which the next run puts back
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


# -- disk space --------------------------------------------------------------------------------
def free_bytes(path: Path) -> int:
    """Bytes an unprivileged user may still write on the filesystem of `path` (or its nearest parent)."""
    path = path.resolve()
    while not path.exists():
        path = path.parent
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def check_space(out: Path, needed: int) -> None:
    """Refuse when OUT's filesystem has less than `needed` bytes free."""
    free = free_bytes(out.parent)
    if needed > free:
        raise OutputError(
            f"{out} needs {human_bytes(needed)} ({needed} bytes) but its filesystem has only {human_bytes(free)} "
            f"({free} bytes) free; free some space or choose an output folder on another disk"
        )


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc` is a write that failed for lack of space or quota."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
