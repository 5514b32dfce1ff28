"""CDI mode of Reserve: the reserved GPUs' container edits, read from NVIDIA's CDI spec.

`nvidia-ctk cdi generate` writes a Container Device Interface spec (kind
`nvidia.com/gpu`) listing, per GPU or MIG device, the device nodes, mounts,
environment and hooks a container needs, plus edits common to every device.
Docker and Podman can read it themselves, but Nomad's docker driver asks for the
`nvidia` runtime whenever a reservation sets NVIDIA_VISIBLE_DEVICES. So in CDI
mode Reserve answers with the spec's edits as a plain reservation (DeviceSpecs,
Mounts, env) and without NVIDIA_VISIBLE_DEVICES: any runtime can run the task.

Hooks are programs a CDI-aware runtime runs in the container's namespaces; Nomad
cannot. Those a reservation can stand in for are translated (see `_hooks`); the
others are logged once each and skipped.

Specs are read when Reserve needs them and kept until the file's mtime, size or
inode changes, so a Reserve costs a few stat calls.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nomad_device_nvidia.sdk import DeviceSpec, Mount, ReservationRefused

log = logging.getLogger(__name__)

KIND = "nvidia.com/gpu"
SPEC_SUFFIXES = (".yaml", ".yml", ".json")
# Set by nvidia-ctk's specs ("void") for NVIDIA's own runtime; in a reservation it
# makes Nomad's docker driver demand that runtime, which CDI mode exists to avoid.
NVIDIA_VISIBLE_DEVICES = "NVIDIA_VISIBLE_DEVICES"
LD_LIBRARY_PATH = "LD_LIBRARY_PATH"
# A spec larger than this is not a device list: refused before parsing.
MAX_SPEC_BYTES = 16 * 1024 * 1024


class SpecError(Exception):
    """A spec file that cannot be used; the message names the file."""


@dataclass(frozen=True)
class Edits:
    """One set of CDI containerEdits, in the reservation's terms."""

    env: tuple[tuple[str, str], ...] = ()
    devices: tuple[DeviceSpec, ...] = ()
    mounts: tuple[Mount, ...] = ()
    # (hook name, args) as the spec gives them; translated at Reserve.
    hooks: tuple[tuple[str, tuple[str, ...]], ...] = ()


@dataclass(frozen=True)
class Spec:
    path: str
    kind: str
    common: Edits
    devices: Mapping[str, Edits]  # device name (a UUID, an index, "all") -> its edits


@dataclass(frozen=True)
class CdiEdits:
    """What Reserve adds for the reserved devices in CDI mode."""

    env: Mapping[str, str]
    devices: tuple[DeviceSpec, ...]
    mounts: tuple[Mount, ...]
    specs: tuple[str, ...] = field(default=())  # the files the edits came from


# ---- parsing -------------------------------------------------------------


def _load(path: str, data: bytes) -> Any:
    if path.endswith(".json"):
        return json.loads(data)
    # YAML is the format nvidia-ctk writes by default; imported only in CDI mode.
    import yaml

    # The safe loaders build plain lists, dicts and scalars only (no Python objects);
    # libyaml's is about 9x faster (4 ms against 34 ms for nvidia-ctk's 2-GPU spec).
    return yaml.load(data, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise SpecError(f"{where} must be a string, got {value!r:.80}")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise SpecError(f"{where} must be a list, got {value!r:.80}")
    return value


def _map(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(f"{where} must be a map, got {value!r:.80}")
    return value


def _edits(raw: Any, where: str) -> Edits:
    m = _map(raw, where)
    env: list[tuple[str, str]] = []
    for i, item in enumerate(_list(m.get("env"), f"{where}.env")):
        text = _str(item, f"{where}.env[{i}]")
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise SpecError(f"{where}.env[{i}] must be KEY=VALUE, got {text!r:.80}")
        env.append((key, value))
    devices: list[DeviceSpec] = []
    for i, item in enumerate(_list(m.get("deviceNodes"), f"{where}.deviceNodes")):
        at = f"{where}.deviceNodes[{i}]"
        node = _map(item, at)
        path = _str(node.get("path"), f"{at}.path")
        host = _str(node.get("hostPath") or path, f"{at}.hostPath")
        perms = _str(node.get("permissions") or "rwm", f"{at}.permissions")
        if not path.startswith("/") or not host.startswith("/"):
            raise SpecError(f"{at}: paths must be absolute, got {path!r} and {host!r}")
        if not perms or set(perms) - set("rwm"):
            raise SpecError(f"{at}.permissions must be made of r, w and m, got {perms!r}")
        devices.append(DeviceSpec(task_path=path, host_path=host, permissions=perms))
    mounts: list[Mount] = []
    for i, item in enumerate(_list(m.get("mounts"), f"{where}.mounts")):
        at = f"{where}.mounts[{i}]"
        mount = _map(item, at)
        host = _str(mount.get("hostPath"), f"{at}.hostPath")
        task = _str(mount.get("containerPath"), f"{at}.containerPath")
        options = [_str(o, f"{at}.options") for o in _list(mount.get("options"), f"{at}.options")]
        mounts.append(Mount(task_path=task, host_path=host, read_only="ro" in options))
    hooks: list[tuple[str, tuple[str, ...]]] = []
    for i, item in enumerate(_list(m.get("hooks"), f"{where}.hooks")):
        at = f"{where}.hooks[{i}]"
        hook = _map(item, at)
        name = _str(hook.get("hookName", ""), f"{at}.hookName")
        path = _str(hook.get("path"), f"{at}.path")
        args = tuple(_str(a, f"{at}.args") for a in _list(hook.get("args"), f"{at}.args")) or (path,)
        hooks.append((name, args))
    return Edits(tuple(env), tuple(devices), tuple(mounts), tuple(hooks))


def parse_spec(path: str, data: bytes) -> Spec:
    """A spec file's contents, checked as far as Reserve relies on them."""
    try:
        raw = _load(path, data)
    except Exception as exc:  # noqa: BLE001 - any parser's error is "not a spec"
        raise SpecError(f"{path}: not valid {'JSON' if path.endswith('.json') else 'YAML'}: {exc}") from None
    try:
        top = _map(raw, "the spec")
        _str(top.get("cdiVersion"), "cdiVersion")
        kind = _str(top.get("kind"), "kind")
        devices: dict[str, Edits] = {}
        for i, item in enumerate(_list(top.get("devices"), "devices")):
            dev = _map(item, f"devices[{i}]")
            name = _str(dev.get("name"), f"devices[{i}].name")
            if name in devices:
                raise SpecError(f"devices[{i}]: device {name!r} is listed twice")
            devices[name] = _edits(dev.get("containerEdits"), f"devices[{i}].containerEdits")
        common = _edits(top.get("containerEdits"), "containerEdits")
    except SpecError as exc:
        raise SpecError(f"{path}: {exc}") from None
    return Spec(path=path, kind=kind, common=common, devices=devices)


# ---- the spec files, cached by file identity -----------------------------


class SpecCache:
    """Parsed spec files, re-read only when a file changes. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parsed: dict[str, tuple[tuple[int, int, int, int], Spec | SpecError]] = {}
        self._logged: set[str] = set()

    def load(self, dirs: Sequence[str]) -> tuple[list[Spec], list[SpecError]]:
        """The NVIDIA specs in `dirs` (lowest priority first), and the files that could not be read."""
        specs: list[Spec] = []
        errors: list[SpecError] = []
        seen: set[str] = set()
        for d in dirs:
            try:
                names = sorted(os.listdir(d))
            except FileNotFoundError:
                continue
            except OSError as exc:
                errors.append(SpecError(f"{d}: cannot list: {exc.strerror}"))
                continue
            for name in names:
                if not name.endswith(SPEC_SUFFIXES):
                    continue
                path = os.path.join(d, name)
                seen.add(path)
                got = self._file(path)
                if isinstance(got, SpecError):
                    errors.append(got)
                elif got is not None and got.kind == KIND:
                    specs.append(got)
        with self._lock:
            for gone in set(self._parsed) - seen:
                del self._parsed[gone]
        return specs, errors

    def _file(self, path: str) -> Spec | SpecError | None:
        try:
            st = os.stat(path)
        except OSError as exc:
            return SpecError(f"{path}: cannot read: {exc.strerror}")
        if not os.path.isfile(path):
            return None
        key = (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)
        with self._lock:
            cached = self._parsed.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
        result: Spec | SpecError
        if st.st_size > MAX_SPEC_BYTES:
            result = SpecError(f"{path}: {st.st_size:,} bytes, larger than any device spec ({MAX_SPEC_BYTES:,})")
        else:
            try:
                with open(path, "rb") as f:
                    data = f.read(MAX_SPEC_BYTES + 1)
            except OSError as exc:
                result = SpecError(f"{path}: cannot read: {exc.strerror}")
            else:
                try:
                    result = parse_spec(path, data)
                except SpecError as exc:
                    result = exc
        if isinstance(result, SpecError):
            self.log_once(f"bad:{path}:{key}", "CDI spec not usable: %s", result)
        with self._lock:
            self._parsed[path] = (key, result)
        return result

    def log_once(self, key: str, msg: str, *args: object) -> None:
        with self._lock:
            if key in self._logged:
                return
            self._logged.add(key)
        log.warning(msg, *args)


CACHE = SpecCache()


# ---- Reserve -------------------------------------------------------------


def _find(specs: Sequence[Spec], names: Iterable[str]) -> tuple[Spec, str, Edits] | None:
    # A later spec (a later directory; /var/run/cdi after /etc/cdi) wins, as in CDI's registry.
    for spec in reversed(specs):
        for name in names:
            edits = spec.devices.get(name)
            if edits is not None:
                return spec, name, edits
    return None


def _flag_values(args: Sequence[str], flag: str) -> list[str]:
    out = []
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            out.append(args[i + 1])
        elif a.startswith(flag + "="):
            out.append(a[len(flag) + 1 :])
    return out


def _hooks(edits: Sequence[Edits], mounts: list[Mount], env: dict[str, str], cache: SpecCache, spec: str) -> None:
    """Stand in for the hooks a reservation can replace; log the others once.

    - `update-ldcache --folder F`: the runtime would add F to the container's
      ld.so cache; F goes on LD_LIBRARY_PATH instead.
    - `create-symlinks --link TARGET::LINK`: the runtime would make LINK a symlink
      to TARGET (relative to LINK's folder); the mounted file the chain of links
      ends at is mounted at LINK too (a bind mount cannot be a symlink).
    """
    folders: list[str] = []
    links: dict[str, str] = {}  # link path in the task -> what it points at, absolute
    for e in edits:
        for name, args in e.hooks:
            sub = args[1] if len(args) > 1 else ""
            if sub == "update-ldcache":
                folders += [f for f in _flag_values(args, "--folder") if f not in folders]
            elif sub == "create-symlinks":
                for link in _flag_values(args, "--link"):
                    target, sep, path = link.partition("::")
                    if not sep or not target or not path.startswith("/"):
                        cache.log_once(f"link:{spec}:{link}", "CDI spec %s: symlink %r not understood; not added", spec, link)
                        continue
                    links.setdefault(path, posixpath.normpath(posixpath.join(posixpath.dirname(path), target)))
            else:
                tool = posixpath.basename(args[0]) if args else ""
                what = " ".join(a for a in (tool, sub) if a) or "(no program)"
                cache.log_once(f"hook:{spec}:{what}", "CDI spec %s: the %s hook %r cannot run under Nomad; skipped "
                               "(its effect is missing in the task)", spec, name or "unnamed", what)
    by_task = {m.task_path: m for m in mounts}
    for path, target in links.items():
        if path in by_task:
            continue  # a mounted file already stands there
        hops = 0
        while target not in by_task and target in links and hops < len(links):
            target, hops = links[target], hops + 1
        source = by_task.get(target)
        if source is None:
            cache.log_once(f"link:{spec}:{path}", "CDI spec %s: symlink %s -> %s leads to no mounted file; not added",
                           spec, path, target)
            continue
        mounts.append(Mount(task_path=path, host_path=source.host_path, read_only=source.read_only))
    if folders:
        extra = ":".join(folders)
        env[LD_LIBRARY_PATH] = f"{env[LD_LIBRARY_PATH]}:{extra}" if env.get(LD_LIBRARY_PATH) else extra


def edits_for(
    devices: Sequence[tuple[str, str]], dirs: Sequence[str], cache: SpecCache = CACHE
) -> CdiEdits:
    """The container edits for `devices`, each (UUID, index name), found by either name.

    Raises ReservationRefused naming the spec files and the missing device.
    """
    specs, errors = cache.load(dirs)
    found: list[tuple[Spec, Edits]] = []
    missing: list[str] = []
    for uuid, index in devices:
        hit = _find(specs, (uuid, index))
        if hit is None:
            missing.append(f"{uuid} (index {index})")
        else:
            found.append((hit[0], hit[2]))
    if missing:
        looked = ", ".join(s.path for s in specs) or f"no {KIND} spec in {', '.join(dirs)}"
        problems = f"; unreadable: {'; '.join(str(e) for e in errors)}" if errors else ""
        raise ReservationRefused(
            f"CDI mode: {', '.join(missing)} not found in the CDI specs ({looked}){problems}; "
            f"regenerate the spec with `nvidia-ctk cdi generate`"
        )
    used = list({s.path: s for s, _ in found}.values())
    # Common edits once per spec, then each device's, in the order of the reservation.
    edits = [s.common for s in used] + [e for _, e in found]
    env: dict[str, str] = {}
    nodes: dict[str, DeviceSpec] = {}
    mounts: dict[str, Mount] = {}
    for e in edits:
        for k, v in e.env:
            if k != NVIDIA_VISIBLE_DEVICES:
                env[k] = v
        for d in e.devices:
            nodes.setdefault(d.task_path, d)
        for m in e.mounts:
            mounts.setdefault(m.task_path, m)
    mount_list = list(mounts.values())
    _hooks(edits, mount_list, env, cache, ", ".join(s.path for s in used))
    return CdiEdits(env=env, devices=tuple(nodes.values()), mounts=tuple(mount_list),
                    specs=tuple(s.path for s in used))

