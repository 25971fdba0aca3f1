"""Compiled DeepSpeed ops: one build folder per environment, ahead-of-time builds, and build locks that
never make a run wait forever.

DeepSpeed JIT-compiles some ops the first time they are used (on CPU the shared-memory comm op, built by
``deepspeed.comm.torch.TorchBackend`` inside ``deepspeed.init_distributed``; on GPU fused Adam, CPU Adam
for offload, async I/O ...).  The build goes through ``torch.utils.cpp_extension.load``, which takes the
lock ``<TORCH_EXTENSIONS_DIR>/<op>/lock`` (``torch.utils.file_baton.FileBaton``: an empty file created
with ``O_EXCL``) and *every other process waits for that file to disappear, forever*.  A build killed by a
time limit leaves the file behind and every later run hangs.

What this module does:

* **Folder.**  Compiled ops live in ``$FAIRHPC_OPS_DIR/<tag>`` (default ``~/.cache/fairhpc/torch_extensions``
  or ``$XDG_CACHE_HOME/fairhpc/torch_extensions``), ``<tag> = py<X.Y>-torch<ver>-ds<ver>-<hash of
  sys.prefix>``, so two environments never share (and never rebuild) each other's ops.  It is exported as
  ``TORCH_EXTENSIONS_DIR``, which torch reads when it builds an op (not when DeepSpeed is imported).  A
  ``TORCH_EXTENSIONS_DIR`` the user set is respected.
* **Our builds** (``fairhpc build-ops`` and :func:`prepare_ops`) run under a kernel lock (``fcntl.flock`` on
  ``<op>/fairhpc-build.flock``, released by the kernel when the process dies, whatever kills it) and write
  an owner record ``<op>/lock.owner`` (host, pid, process start time) whose mtime a heartbeat thread
  refreshes every few seconds while the build runs.
* **Judging an existing torch lock** (:func:`inspect_lock`):
    1. a process on this host has the lock file open (a ``/proc/*/fd`` scan; torch keeps the file open for
       the whole build) -> *live*;
    2. an owner record from another host whose heartbeat is fresh -> *live*; stale heartbeat -> *stale*;
    3. an owner record from this host (and no process has the file open) -> *stale* (the builder is gone);
    4. no owner record, nobody on this host has it open, and the folder is on a local filesystem -> *stale*
       (no other host can hold it);
    5. no owner record on a shared filesystem (NFS, Lustre, GPFS ...) -> *stale* once the file is older than
       ``FAIRHPC_OPS_STALE_AFTER`` seconds (default 900), else it may belong to a build on another node.
  A stale lock is removed with a message naming it; a live (or undecided) one is waited on for at most
  ``FAIRHPC_OPS_LOCK_TIMEOUT`` seconds (default 600), then the run fails with :class:`OpsLockError`,
  which names the lock file and what to do.
* **Ops a run does not need are not built**: a single-process CPU run never uses the shared-memory comm op,
  so :func:`prepare_ops` marks it unavailable in ``deepspeed.ops.__compatible_ops__`` (the dict DeepSpeed
  consults before building it, kept in the module so that edits persist) and DeepSpeed skips it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from fairhpc.errors import FairhpcError

OPS_DIR_ENV = "FAIRHPC_OPS_DIR"
LOCK_TIMEOUT_ENV = "FAIRHPC_OPS_LOCK_TIMEOUT"
STALE_AFTER_ENV = "FAIRHPC_OPS_STALE_AFTER"
AUTO_MARK_ENV = "FAIRHPC_AUTO_TORCH_EXTENSIONS_DIR"  # the value fairhpc set, so it is not taken as the user's
DEFAULT_LOCK_TIMEOUT = 600.0
DEFAULT_STALE_AFTER = 900.0
HEARTBEAT_S = 5.0
HEARTBEAT_STALE_S = 60.0
TORCH_LOCK = "lock"            # torch.utils.cpp_extension: FileBaton(os.path.join(build_directory, 'lock'))
OWNER_FILE = "lock.owner"
FLOCK_FILE = "fairhpc-build.flock"
SHM_COMM = "ShareMemCommBuilder"
# filesystems on which another host may hold the lock (anything FUSE is counted as shared too)
SHARED_FS = {"nfs", "nfs4", "lustre", "gpfs", "beegfs", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "9p",
             "panfs", "afs", "wekafs", "pvfs2", "orangefs", "ocfs2", "gfs2", "virtiofs"}


class OpsLockError(FairhpcError):
    """A DeepSpeed op build lock held by a live (or undecidable) builder for longer than the bound."""

    kind = "build lock"


def _log(msg: str) -> None:
    print(f"[fairhpc ops] {msg}", file=sys.stderr, flush=True)


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise OpsLockError(f"{name}={raw!r} is not a number of seconds") from None


# ------------------------------------------------------------------------------------------------ folder
def _version(dist: str, module: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        try:
            return str(__import__(module).__version__)
        except ImportError:
            return "none"


def env_tag() -> str:
    """``py3.11-torch2.13.0+cpu-ds0.19.8-<10 hex of sha256(realpath(sys.prefix))>``."""
    prefix_hash = hashlib.sha256(os.path.realpath(sys.prefix).encode()).hexdigest()[:10]
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    return f"py{py}-torch{_version('torch', 'torch')}-ds{_version('deepspeed', 'deepspeed')}-{prefix_hash}"


def default_ops_dir() -> Path:
    """The environment-specific folder: ``$FAIRHPC_OPS_DIR/<tag>`` or ``<user cache>/fairhpc/torch_extensions/<tag>``."""
    base = os.environ.get(OPS_DIR_ENV)
    if not base:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fairhpc" / "torch_extensions"
    return Path(base).expanduser().absolute() / env_tag()


def user_extensions_dir() -> Path | None:
    """TORCH_EXTENSIONS_DIR when the user set it (not a value fairhpc exported, e.g. inherited from a parent)."""
    value = os.environ.get("TORCH_EXTENSIONS_DIR")
    if not value or value == os.environ.get(AUTO_MARK_ENV):
        return None
    return Path(value).expanduser().absolute()


def ops_dir() -> Path:
    """Where compiled DeepSpeed ops live for this process (the user's TORCH_EXTENSIONS_DIR wins)."""
    return user_extensions_dir() or default_ops_dir()


def use_ops_dir() -> Path:
    """Export :func:`ops_dir` as TORCH_EXTENSIONS_DIR (read by torch when it builds an op) and return it."""
    path = ops_dir()
    if user_extensions_dir() is None:
        os.environ["TORCH_EXTENSIONS_DIR"] = os.environ[AUTO_MARK_ENV] = str(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


# ------------------------------------------------------------------------------------------------ locks
def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _start_time(pid: int) -> str:
    """Start time of a process in clock ticks after boot (field 22 of /proc/PID/stat), '' if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    text = " ".join(raw.replace(b"\0", b" ").decode(errors="replace").split())
    return text if len(text) <= 160 else text[:157] + "..."


def local_holders(path: Path) -> list[tuple[int, str]]:
    """(pid, command line) of the processes on this host that have ``path`` open (scan of /proc/*/fd).

    Processes of other users cannot be inspected and are not listed."""
    try:
        target = os.stat(path)
    except OSError:
        return []
    name, me, found = path.name, os.getpid(), []
    for entry in os.scandir("/proc") if os.path.isdir("/proc") else ():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        fd_dir = f"/proc/{entry.name}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            link = f"{fd_dir}/{fd}"
            try:
                if os.path.basename(os.readlink(link)).split(" ")[0] != name:
                    continue
                st = os.stat(link)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
                found.append((int(entry.name), _cmdline(int(entry.name))))
                break
    return found


def fs_type(path: Path) -> str:
    """Filesystem type of the mount holding ``path`` ('' if /proc/mounts cannot tell)."""
    real, best, kind = os.path.realpath(path), "", ""
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return ""
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        mnt = parts[1].replace("\\040", " ")
        if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
            best, kind = mnt, parts[2]
    return kind


def is_shared_fs(path: Path) -> bool:
    kind = fs_type(path)
    return not kind or kind in SHARED_FS or kind.startswith("fuse")


@dataclass
class LockState:
    state: str  # absent | live | stale | unknown
    why: str
    lock: Path


def _read_owner(op_dir: Path) -> dict | None:
    try:
        owner = json.loads((op_dir / OWNER_FILE).read_text())
        return owner if isinstance(owner, dict) else None
    except (OSError, ValueError):
        return None


def inspect_lock(lock: Path, stale_after: float | None = None) -> LockState:
    """Decide whether torch's build lock ``lock`` belongs to a live builder (see the module docstring)."""
    lock = Path(lock)
    stale_after = _env_float(STALE_AFTER_ENV, DEFAULT_STALE_AFTER) if stale_after is None else stale_after
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return LockState("absent", "no lock", lock)
    holders = local_holders(lock)
    if holders:
        pid, cmd = holders[0]
        return LockState("live", f"process {pid} on this host holds it ({cmd})", lock)
    owner = _read_owner(lock.parent)
    if owner is not None:
        same_host = owner.get("host") == socket.gethostname() and owner.get("boot_id") == _boot_id()
        who = f"pid {owner.get('pid')} on host {owner.get('host')}"
        if same_host:
            return LockState("stale", f"its builder ({who}) is no longer running", lock)
        try:
            beat = time.time() - (lock.parent / OWNER_FILE).stat().st_mtime
        except OSError:
            beat = float("inf")
        if beat < HEARTBEAT_STALE_S:
            return LockState("live", f"being built by {who} (heartbeat {beat:.0f} s ago)", lock)
        return LockState("stale", f"its builder ({who}) stopped its heartbeat {beat:.0f} s ago", lock)
    if not is_shared_fs(lock):
        return LockState("stale", f"no process has it open and its folder is on a local filesystem "
                                  f"({fs_type(lock)}), so no other host can hold it", lock)
    if age > stale_after:
        return LockState("stale", f"no process on this host has it open and it is {age:.0f} s old "
                                  f"(> {STALE_AFTER_ENV}={stale_after:.0f})", lock)
    return LockState("unknown", f"no process on this host has it open, but it is on a shared filesystem and "
                                f"only {age:.0f} s old: a build on another node may hold it", lock)


def _remove_stale(info: LockState) -> None:
    for path in (info.lock, info.lock.parent / OWNER_FILE):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    _log(f"removed the stale build lock {info.lock}: {info.why}")


def _what_to_do(lock: Path) -> str:
    return (f"Wait for that build to finish and start again, or stop it; if no build is running on any node, "
            f"delete the lock (rm {lock}).  Prebuilding once avoids builds at run time: `fairhpc build-ops "
            f"--world-size N` (see the README, 'Compiled DeepSpeed ops').  {LOCK_TIMEOUT_ENV} sets the wait.")


def wait_for_lock(lock: Path, timeout: float | None = None, deadline: float | None = None) -> None:
    """Return once ``lock`` is gone or was stale (removed); raise :class:`OpsLockError` after ``timeout``."""
    timeout = _env_float(LOCK_TIMEOUT_ENV, DEFAULT_LOCK_TIMEOUT) if timeout is None else timeout
    deadline = time.monotonic() + timeout if deadline is None else deadline
    announced = False
    while True:
        info = inspect_lock(lock)
        if info.state == "absent":
            return
        if info.state == "stale":
            _remove_stale(info)
            return
        if time.monotonic() >= deadline:
            raise OpsLockError(f"the DeepSpeed op build lock {lock} is still held after waiting {timeout:.0f} s: "
                               f"{info.why}.  {_what_to_do(lock)}")
        if not announced:
            _log(f"waiting (at most {max(0.0, deadline - time.monotonic()):.0f} s) for the build lock {lock}: "
                 f"{info.why}")
            announced = True
        time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))


def _try_flock(fd: int, path: Path) -> bool:
    """Take the kernel lock without blocking: True if taken (or unsupported here), False if another holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as e:  # e.g. a filesystem without flock support (some Lustre mounts)
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
        _log(f"no kernel lock on {path} ({e.strerror}); relying on the stale-lock checks only")
        return True


def clear_stale_locks(root: Path | None = None) -> list[Path]:
    """Remove every stale ``<root>/<op>/lock`` (live ones are left alone); returns the removed paths.

    Each check runs under the op's kernel lock, so two ranks never remove each other's fresh lock; an op that
    a fairhpc process is building right now is skipped."""
    root = Path(root) if root is not None else ops_dir()
    removed = []
    for lock in sorted(root.glob(f"*/{TORCH_LOCK}")) if root.is_dir() else ():
        fd = os.open(lock.parent / FLOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if not _try_flock(fd, lock.parent / FLOCK_FILE):
                continue
            info = inspect_lock(lock)
            if info.state == "stale":
                _remove_stale(info)
                removed.append(lock)
        finally:
            os.close(fd)
    return removed


class _Heartbeat(threading.Thread):
    def __init__(self, path: Path):
        super().__init__(daemon=True, name="fairhpc-ops-heartbeat")
        self.path, self.done = path, threading.Event()

    def run(self) -> None:
        while not self.done.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):
                os.utime(self.path)


@contextlib.contextmanager
def build_guard(op_dir: Path, timeout: float | None = None):
    """Exclusive, bounded right to build into ``op_dir``: kernel lock, stale-lock check, owner record."""
    timeout = _env_float(LOCK_TIMEOUT_ENV, DEFAULT_LOCK_TIMEOUT) if timeout is None else timeout
    deadline = time.monotonic() + timeout
    op_dir.mkdir(parents=True, exist_ok=True)
    lock, flock_path = op_dir / TORCH_LOCK, op_dir / FLOCK_FILE
    fd = os.open(flock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        announced = False
        while not _try_flock(fd, flock_path):
            owner = _read_owner(op_dir) or {}
            who = f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')}"
            if time.monotonic() >= deadline:
                raise OpsLockError(f"another fairhpc process ({who}) has been building into {op_dir} for more "
                                   f"than {timeout:.0f} s (build lock {lock}, kernel lock {flock_path}).  "
                                   f"{_what_to_do(lock)}")
            if not announced:
                _log(f"waiting (at most {timeout:.0f} s) for {who}, which is building into {op_dir}")
                announced = True
            time.sleep(0.5)
        wait_for_lock(lock, timeout, deadline)
        owner = op_dir / OWNER_FILE
        owner.write_text(json.dumps({"host": socket.gethostname(), "boot_id": _boot_id(), "pid": os.getpid(),
                                     "start_time": _start_time(os.getpid()), "argv": sys.argv[:8],
                                     "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
        beat = _Heartbeat(owner)
        beat.start()
        try:
            yield
        finally:
            beat.done.set()
            beat.join()
            with contextlib.suppress(FileNotFoundError):
                owner.unlink()
    finally:
        os.close(fd)  # releases the flock


# ------------------------------------------------------------------------------------------------ ops
def needed_ops(world_size: int, ds_config: dict | None = None, device: str = "cpu") -> list[str]:
    """DeepSpeed op builders (class names) that a run JIT-compiles at start-up.

    CPU: the shared-memory comm op, built by ``deepspeed.init_distributed`` when there is more than one
    process.  GPU: fused Adam when the DeepSpeed config names an Adam optimizer, CPU Adam when it offloads the
    optimizer, async I/O when it offloads to NVMe (fairhpc passes its own torch AdamW and offloads nothing,
    so its own configs need none)."""
    ops: list[str] = []
    ds_config = ds_config or {}
    zero = ds_config.get("zero_optimization") or {}
    offload_opt = str((zero.get("offload_optimizer") or {}).get("device", "none")).lower()
    offload_param = str((zero.get("offload_param") or {}).get("device", "none")).lower()
    opt_type = str((ds_config.get("optimizer") or {}).get("type", "")).lower()
    if device == "cpu":
        if world_size > 1:
            ops.append(SHM_COMM)
    elif offload_opt in ("cpu", "nvme"):
        ops.append("CPUAdamBuilder")
    elif opt_type in ("adam", "adamw"):
        ops.append("FusedAdamBuilder")
    if device != "cpu" and "nvme" in (offload_opt, offload_param):
        ops.append("AsyncIOBuilder")
    return ops


def _builder(class_name: str):
    from deepspeed.accelerator import get_accelerator

    return get_accelerator().create_op_builder(class_name)


def build_op(class_name: str, timeout: float | None = None) -> dict | None:
    """Compile (or load, when up to date) one op into :func:`ops_dir` under :func:`build_guard`.

    The loaded module stays cached in DeepSpeed's ``OpBuilder._loaded_ops``, so DeepSpeed's own later
    ``load()`` of the op in this process touches no lock.  Returns None when this accelerator has no such op."""
    root = use_ops_dir()
    builder = _builder(class_name)
    if builder is None:
        return None
    if not builder.is_compatible(False):
        _log(f"{builder.name} cannot be built here (not compatible); skipped")
        return None
    op_dir = root / builder.name
    so = op_dir / f"{builder.name}.so"
    before = so.stat().st_mtime_ns if so.exists() else None
    t0 = time.time()
    with build_guard(op_dir, timeout):
        if before is None:
            _log(f"compiling the DeepSpeed op {builder.name} into {op_dir} (once per environment)")
        module = builder.load(verbose=False)
    path = Path(getattr(module, "__file__", so))
    after = path.stat().st_mtime_ns if path.exists() else None
    return {"op": builder.name, "builder": class_name, "path": str(path), "seconds": round(time.time() - t0, 2),
            "compiled": after != before}


def disable_op(class_name: str) -> bool:
    """Make DeepSpeed skip (never build) an op it would build by itself; True if it was disabled."""
    builder = _builder(class_name)
    if builder is None:
        return False
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__[builder.NAME] = False
    return True


def prepare_ops(world_size: int, ds_config: dict | None = None, timeout: float | None = None) -> Path:
    """Call at the start of a run, before ``deepspeed.init_distributed``: export the environment's ops folder
    as TORCH_EXTENSIONS_DIR, remove stale build locks, build (bounded) the ops this run needs, and keep
    DeepSpeed from building the shared-memory comm op in a single-process CPU run.  Returns the folder."""
    import torch

    root = use_ops_dir()
    clear_stale_locks(root)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and world_size <= 1:
        disable_op(SHM_COMM)
    for name in needed_ops(world_size, ds_config, device):
        build_op(name, timeout)
    return root


# ------------------------------------------------------------------------------------------------ CLI
def _build_ops(args) -> int:
    import torch

    if args.world_size < 1:
        raise FairhpcError(f"--world-size: expected an integer >= 1, got {args.world_size}")
    if args.timeout is not None and not args.timeout > 0:
        raise FairhpcError(f"--timeout: expected seconds > 0, got {args.timeout}")
    if args.marker and Path(args.marker).is_dir():
        raise FairhpcError(f"--marker {args.marker}: a directory; give the JSON file to write")

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    ds_config = None
    if args.config or args.overrides:
        from fairhpc.config import load_config
        from fairhpc.ds_config import build_ds_config

        cfg = load_config(args.config, args.overrides)
        ds_config = build_ds_config(cfg, "bf16" if device == "cuda" else "fp32")
    names = args.op or needed_ops(args.world_size, ds_config, device)
    if names and device == "cuda" and not torch.cuda.is_available():
        raise FairhpcError(f"building {', '.join(names)} for --device cuda needs a GPU on this node: GPU ops are "
                           "compiled for the GPU they run on; run `fairhpc build-ops` on a node like the "
                           "training nodes (e.g. srun --gres=gpu:1 fairhpc build-ops ...)")
    root = use_ops_dir()
    clear_stale_locks(root)
    print(f"compiled DeepSpeed ops folder: {root}")
    built = []
    for name in names:
        info = build_op(name, args.timeout)
        if info is None:
            print(f"  {name}: not available on this accelerator, skipped")
            continue
        built.append(info)
        state = f"compiled in {info['seconds']:.1f} s" if info["compiled"] else "up to date"
        print(f"  {info['op']}: {info['path']} ({state})")
    if not names:
        print(f"  nothing to build: a {device} run with world size {args.world_size} and this configuration "
              "JIT-compiles no DeepSpeed op")
    if args.marker:
        from fairhpc.io import atomic_write_json

        Path(args.marker).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(Path(args.marker), {"ops_dir": str(root), "env_tag": env_tag(), "device": device,
                                              "world_size": args.world_size, "ops": built,
                                              "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("build-ops", help="compile ahead of time the DeepSpeed ops a run needs",
                       description="Compile the DeepSpeed ops that a run of this configuration would JIT-compile at "
                                   "start-up (CPU: the shared-memory comm op when --world-size > 1; GPU: fused / CPU "
                                   "Adam as the DeepSpeed config needs) into this environment's ops folder, and "
                                   "print where they live.  Run it on a node like the training nodes.")
    p.add_argument("--config", help="YAML run config (its DeepSpeed settings decide the GPU ops)")
    p.add_argument("--world-size", type=int, default=int(os.environ.get("WORLD_SIZE", "1")),
                   help="processes of the training runs (default: $WORLD_SIZE or 1)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="device of the training runs (default: cuda if this node has a GPU)")
    p.add_argument("--op", action="append", metavar="BUILDER",
                   help="build this DeepSpeed op builder (e.g. ShareMemCommBuilder) instead; repeatable")
    p.add_argument("--timeout", type=float, default=None,
                   help=f"seconds to wait for a build lock held by another builder (default ${LOCK_TIMEOUT_ENV} "
                        f"or {DEFAULT_LOCK_TIMEOUT:.0f})")
    p.add_argument("--marker", help="also write a JSON record of what was built here (for workflows)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=_build_ops)
