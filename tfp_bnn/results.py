"""Results written atomically: staged beside their place, fingerprinted, swapped in at the end.

    parent/
      out/                          the previous results: untouched until the new ones are done
      .out.tmp-<pid>-<random>/      the staging folder (or file): everything is written here,
                                    then manifest.json (sizes and sha256 of every file, written
                                    last), modes 0755 / 0644, then one rename onto ``out``

Replacing an existing ``out`` (``overwrite``) is one atomic exchange of the two names on Linux
(``renameat2(RENAME_EXCHANGE)``), so at every instant ``out`` is either the complete old
results or the complete new ones; elsewhere it is two renames (a process killed between them
gets its old results back at the next run). SIGTERM, SIGHUP and Ctrl-C
during the job remove the staging folder and end the process as the signal would have; a
signal that arrives during the swap is held until the swap is done. A staging folder left by a
process killed outright (SIGKILL, power loss) is removed by the next run for the same ``out``
(its process is gone): it never blocks a rerun.

`verify` checks a folder against its manifest before `tfp_bnn.train.load` trusts it.

Example:
    >>> import os
    >>> model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2)])
    >>> with Staging("runs/train", overwrite=False, owned=("model.keras",)) as stage:
    ...     model.save(os.path.join(stage.path, "model.keras"))
    ...     stage.commit()
    >>> "model.keras" in os.listdir("runs/train")
    True
"""
import ctypes
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import sys
import threading

__all__ = ["MANIFEST", "Staging", "check_writable", "verify", "write_manifest",
           "publish_permissions"]

MANIFEST = "manifest.json"
_FORMAT = "tfp-bnn results 1"
_DIR_MODE, _FILE_MODE = 0o755, 0o644
_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP", "SIGINT") if hasattr(signal, n))


# --- checks before any work ------------------------------------------------------------------

def _read_only(path):
    # Mode bits as well as access(): root passes every access() check, but a folder without a
    # single write bit was marked read-only on purpose and is not replaced.
    return not os.access(path, os.W_OK | os.X_OK) or not os.stat(path).st_mode & 0o222


def check_writable(path, argument, inside=False):
    """Refuse a ``path`` whose nearest existing folder is a file or read-only.

    ``path`` itself is to be created (or renamed onto) in its parent; with ``inside``, ``path``
    is a folder that entries are created in. Returns the absolute path; nothing is created.
    """
    path = os.path.abspath(os.fspath(path))
    probe = path if inside else os.path.dirname(path)  # renaming in place writes the parent
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ValueError(f"{argument}={path!r} lies under {probe!r}, which is a file, not a "
                         "folder; nothing was written.")
    if _read_only(probe):
        raise PermissionError(f"{argument}={path!r} is not writable ({probe!r} is read-only); "
                              "nothing was written.")
    return path


# --- the manifest ----------------------------------------------------------------------------

def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(folder):
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            yield os.path.relpath(full, folder).replace(os.sep, "/"), full


def write_manifest(folder):
    """Write ``folder/manifest.json``: every file's size and sha256 (call it last)."""
    files = {rel: {"size": os.path.getsize(full), "sha256": _sha256(full)}
             for rel, full in _files(folder) if rel != MANIFEST}
    with open(os.path.join(folder, MANIFEST), "w") as f:
        json.dump({"format": _FORMAT, "files": files}, f, indent=1)


def verify(folder):
    """The names listed in ``folder``'s manifest, once each file matches its size and sha256.

    Raises:
        ValueError naming the folder and the first file that is missing, cut short or changed
        (or that there is no readable manifest).
    """
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        raise ValueError(f"{folder!r} has no {MANIFEST}: it is not a complete tfp-bnn result "
                         "(written by an older version, interrupted, or assembled by hand); "
                         "rerun the job that wrote it.")
    try:
        with open(path) as f:
            manifest = json.load(f)
        files = dict(manifest["files"])
        if manifest.get("format") != _FORMAT:
            raise ValueError(f"format {manifest.get('format')!r}")
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path!r} is not a valid tfp-bnn manifest ({e}).") from None
    for rel, entry in files.items():
        full = os.path.join(folder, *rel.split("/"))
        if not os.path.isfile(full):
            raise ValueError(f"{folder!r} is incomplete: {rel} is listed in {MANIFEST} but "
                             "missing.")
        if os.path.getsize(full) != entry.get("size") or _sha256(full) != entry.get("sha256"):
            raise ValueError(f"{folder!r} has been changed since it was written: {rel} does not "
                             f"match its size and sha256 in {MANIFEST}.")
    return frozenset(files)


def publish_permissions(path):
    """Folders 0755 and files 0644 under ``path`` (whatever the umask, or mkdtemp's 0700).

    A server running as another user (TF Serving) can then read an export.
    """
    if os.path.isfile(path):
        os.chmod(path, _FILE_MODE)
        return
    os.chmod(path, _DIR_MODE)
    for root, dirs, files in os.walk(path):
        for d in dirs:
            os.chmod(os.path.join(root, d), _DIR_MODE)
        for f in files:
            os.chmod(os.path.join(root, f), _FILE_MODE)


# --- signals ---------------------------------------------------------------------------------

class _Interrupted(BaseException):
    """Raised in the main thread by the handler `Staging` installs for SIGTERM / SIGHUP."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


_state = {"critical": False, "pending": None}


def _handler(signum, frame):  # pylint: disable=unused-argument
    if _state["critical"]:  # in the middle of the swap: finish it first
        _state["pending"] = signum
        return
    for s in _SIGNALS:  # a second signal must not interrupt the clean-up
        if signal.getsignal(s) is _handler:
            signal.signal(s, signal.SIG_IGN)
    if signum == getattr(signal, "SIGINT", None):
        raise KeyboardInterrupt
    raise _Interrupted(signum)


def _install():
    """Our handler for the signals still at their default; returns the previous handlers."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {}
    for s in _SIGNALS:
        current = signal.getsignal(s)
        if current in (signal.SIG_DFL, signal.default_int_handler):
            previous[s] = current
            signal.signal(s, _handler)
    return previous


# --- the swap --------------------------------------------------------------------------------

def _exchange(a, b):
    """Swap the names ``a`` and ``b`` atomically; False where the system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    errno = ctypes.get_errno()
    if errno in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: a file system without it
        return False
    raise OSError(errno, os.strerror(errno), b)


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class Staging:
    """Write a results folder (or one file) beside ``out``, then swap it into place.

    The constructor only checks (nothing is created): ``out`` is free, or ``overwrite`` and
    ``out`` holds nothing but ``owned`` files (a folder holding anything else is never
    replaced), and its place is writable. Entering creates the staging folder (or reserves
    the staging file name ``path``), removes stale staging left by dead processes and
    installs the signal handlers; `commit` writes the manifest, sets the modes and swaps;
    leaving without `commit` removes the staging.

    Args:
        out: the final folder (or file).
        overwrite: replace an existing ``out``.
        owned: the names our job writes into ``out``; with ``overwrite`` an existing ``out``
            holding anything else is refused. None: any content may be replaced (an export
            version folder).
        argument: how ``out`` is named in error messages (``"--out"``, ``"export_dir"``).
        kind: ``"folder"`` or ``"file"``.
        manifest: write `MANIFEST` into the folder at `commit`.
    """

    def __init__(self, out, overwrite=False, owned=(), argument="out", kind="folder",
                 manifest=True):
        if kind not in ("folder", "file"):
            raise ValueError(f"kind must be 'folder' or 'file'. Received: kind={kind!r}")
        self.out = check_writable(out, argument)
        self.overwrite, self.kind, self.argument = bool(overwrite), kind, argument
        self.manifest = manifest and kind == "folder"
        self.owned = None if owned is None else frozenset(owned) | {MANIFEST}
        self.path, self._previous, self._committed = None, {}, False
        self._check_free()

    def _check_free(self):
        out, argument = self.out, self.argument
        if not os.path.lexists(out):
            return
        if self.kind == "file":
            if os.path.isdir(out):
                raise ValueError(f"{argument} must be a file path; it is a folder. Received: "
                                 f"{argument}={out!r}")
            if not self.overwrite:
                raise FileExistsError(f"{out!r} already exists; nothing was changed. Pass "
                                      "--overwrite (overwrite=True) to replace it, or choose "
                                      f"another {argument}.")
            return
        if not os.path.isdir(out):
            raise ValueError(f"{argument} must be a folder; it is an existing file. Received: "
                             f"{argument}={out!r}")
        if _read_only(out):
            raise PermissionError(f"{argument}={out!r} is read-only; nothing was written.")
        present = sorted(os.listdir(out))
        if not present:
            return
        if self.owned is not None:
            foreign = [n for n in present if n not in self.owned]
            if foreign:
                raise FileExistsError(
                    f"Output folder {out!r} holds files this job did not write "
                    f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); it is "
                    f"never replaced, nothing was changed. Choose another {argument}.")
        if not self.overwrite:
            listed = ", ".join(n for n in present if n != MANIFEST) or MANIFEST
            raise FileExistsError(
                f"Output folder {out!r} already holds {listed}; nothing was changed. Pass "
                f"--overwrite (overwrite=True) to replace it, or choose another {argument}.")

    def _stale(self):
        parent, name = os.path.split(self.out)
        pattern = re.compile(rf"^\.{re.escape(name)}\.tmp-(\d+)-[0-9a-f]+(-old)?$")
        for entry in os.listdir(parent):
            match = pattern.match(entry)
            if match and not _alive(int(match.group(1))):
                if match.group(2) and not os.path.lexists(self.out):
                    # Killed between the two renames of a swap without exchange: the old
                    # results go back in place rather than away.
                    os.rename(os.path.join(parent, entry), self.out)
                else:
                    _remove(os.path.join(parent, entry))

    def __enter__(self):
        parent, name = os.path.split(self.out)
        os.makedirs(parent, exist_ok=True)
        self._stale()
        self._previous = _install()
        self.path = os.path.join(parent, f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        if self.kind == "folder":
            os.mkdir(self.path)
        return self

    def commit(self):
        """Fingerprint, publish and swap the staging into ``out`` (the old one is removed)."""
        if self.kind == "folder":
            if self.manifest:
                write_manifest(self.path)
        elif not os.path.isfile(self.path):
            raise FileNotFoundError(f"nothing was written to the staging file {self.path!r}")
        publish_permissions(self.path)
        self._check_free()  # another process may have written out meanwhile
        _state["critical"] = True
        try:
            if self.kind == "file" or not os.path.lexists(self.out):
                os.replace(self.path, self.out)
                old = None
            elif _exchange(self.path, self.out):
                old = self.path  # the old results now carry the staging name
            else:
                old = self.path + "-old"
                os.rename(self.out, old)
                os.rename(self.path, self.out)
            self._committed = True
        finally:
            _state["critical"] = False
        if old is not None:
            _remove(old)
        pending, _state["pending"] = _state["pending"], None
        if pending is not None:
            _handler(pending, None)

    def write(self, name, content, default=None):
        """Write ``content`` into the entered staging folder as ``name``: a ``str`` as text,
        anything else as indented JSON (``default``: `json.dump`'s, for values JSON lacks)."""
        if self.path is None or self.kind != "folder":
            raise RuntimeError("Staging.write needs an entered folder staging (with stage: ...)")
        with open(os.path.join(self.path, name), "w") as f:
            if isinstance(content, str):
                f.write(content)
            else:
                json.dump(content, f, indent=2, default=default)

    def write_json(self, obj, default=None):
        """Enter, write ``obj`` as indented JSON to the staging file and commit: the one-file
        results of a benchmark (``kind="file"``)."""
        with self:
            with open(self.path, "w") as f:
                json.dump(obj, f, indent=2, default=default)
            self.commit()

    def __exit__(self, exc_type, exc, tb):
        if not self._committed and self.path is not None:
            _remove(self.path)
        for s, previous in self._previous.items():
            signal.signal(s, previous)
        if isinstance(exc, _Interrupted) and self._previous:
            # End as the signal would have (exit status 128 + signum for the caller).
            os.kill(os.getpid(), exc.signum)
        return False
