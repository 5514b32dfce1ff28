"""The NVIDIA plugin's config: one frozen, validated dataclass and its HCL schema.

The first three keys are HashiCorp's nomad-device-nvidia keys with the same
defaults, so existing agent configs keep working; the rest are ours.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

from nomad_device_nvidia.sdk import ConfigError, hclspec, parse_duration

# XIDs that report an application's fault (illegal address, MMU fault from a
# kernel, ...), not a sick GPU: marking the GPU unhealthy for them would let
# one buggy job take GPUs away from everyone.
DEFAULT_IGNORED_XIDS: tuple[int, ...] = (13, 31, 43, 45, 68, 109)

STATS_ENGINES = ("native", "python")
MAX_SHARES = 64
# What `group_by` may split device groups by (grouping.py's attribute names).
GROUP_BY = ("numa_node", "parent_uuid")
# Floors that keep a typo ("1ns") from turning a loop into a busy loop.
MIN_FINGERPRINT_PERIOD = 1.0
MIN_PROBE_INTERVAL = 0.1
MIN_CALL_TIMEOUT = 0.1
# IMEX channel numbers, as /dev/nvidia-caps-imex-channels/channelN names them
# (the driver's NVreg_ImexChannelCount is 2048 by default).
MAX_IMEX_CHANNEL = 2**20 - 1

T = TypeVar("T")


@dataclass(frozen=True)
class HealthConfig:
    enabled: bool = True
    ignored_xids: frozenset[int] = frozenset(DEFAULT_IGNORED_XIDS)
    # How often every device is probed with one cheap read (loss and recovery).
    probe_interval: float = 5.0
    # How long any one NVML call of the scan, the probes and Reserve may take
    # before its GPU is reported unhealthy (the call itself is left to return).
    call_timeout: float = 3.0


@dataclass(frozen=True)
class ReserveConfig:
    cuda_visible_devices: bool = False
    device_nodes: bool = False
    dev_root: str = "/dev"
    mig_capabilities_root: str = "/proc/driver/nvidia/capabilities"
    # Opt-in extras for NVLink-switched and RDMA nodes, which NVIDIA's container
    # toolkit reads: IMEX channels for multi-node NVLink (NVIDIA_IMEX_CHANNELS,
    # and with device_nodes their /dev nodes), GPUDirect Storage, MOFED, GDRCopy.
    imex_channels: tuple[int, ...] = ()
    gds: bool = False
    mofed: bool = False
    gdrcopy: bool = False
    # CDI mode (nvidia/cdi.py): the device nodes, mounts and env of NVIDIA's CDI
    # spec instead of NVIDIA_VISIBLE_DEVICES, so no nvidia container runtime is needed.
    cdi: bool = False
    cdi_spec_dirs: tuple[str, ...] = ("/etc/cdi", "/var/run/cdi")


@dataclass(frozen=True)
class SharingConfig:
    # 1 = no sharing; N > 1 advertises every GPU or MIG instance as N devices.
    shares: int = 1


# MPS (the `mps` block): HashiCorp's keys (hashicorp/nomad-device-nvidia PR #97)
# with their defaults, then ours (the per-share limits).
MPS_PIPE_DIRECTORY = "/tmp/nvidia-mps"
MPS_LOG_DIRECTORY = "/var/log/nvidia-mps"
MAX_MPS_DEVICES = 1024


@dataclass(frozen=True)
class MpsDeviceConfig:
    """One entry of `device_specific_mps_config`: the MPS daemon of one GPU."""

    uuid: str
    mps_pipe_directory: str
    mps_log_directory: str


@dataclass(frozen=True)
class MpsConfig:
    enabled: bool = False
    mps_user: str = ""  # "" = the tasks' own user runs the MPS server
    mps_pipe_directory: str = MPS_PIPE_DIRECTORY
    mps_log_directory: str = MPS_LOG_DIRECTORY
    # When set, only these GPUs use MPS, each with its own daemon (the top-level
    # directories may then not be set: HashiCorp's rule).
    device_specific_mps_config: tuple[MpsDeviceConfig, ...] = ()
    # Per share; 0 = an equal part: 100 / shares percent, memory / shares.
    active_thread_percentage: int = 0
    pinned_device_mem_limit_mib: int = 0


@dataclass(frozen=True)
class NvidiaConfig:
    enabled: bool = True
    ignored_gpu_ids: frozenset[str] = frozenset()
    fingerprint_period: float = 60.0
    nvml_library: str = ""
    simulate: str = ""
    stats_engine: str = "native"
    extended_stats: bool = False
    # Split device groups by these per-device facts, so they become group attributes.
    group_by: tuple[str, ...] = ()
    health: HealthConfig = field(default_factory=HealthConfig)
    reserve: ReserveConfig = field(default_factory=ReserveConfig)
    sharing: SharingConfig = field(default_factory=SharingConfig)
    mps: MpsConfig = field(default_factory=MpsConfig)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any] | None) -> NvidiaConfig:
        """Validate the decoded agent config; absent keys take their defaults.

        Raises ConfigError naming the offending key (dotted for nested blocks).
        """
        blocks = {"health": _health, "reserve": _reserve, "sharing": _sharing, "mps": _mps}
        return _block(cls, raw, "", {**_parsers(_TOP_KEYS), **blocks})


class _Reader:
    """Reads keys of one config object, remembering which were seen."""

    def __init__(self, raw: Mapping[str, Any] | None, prefix: str) -> None:
        if raw is not None and not isinstance(raw, Mapping):
            raise ConfigError(prefix.rstrip(".") or "config", f"must be a block, got {_kind(raw)}")
        self._raw: Mapping[str, Any] = raw or {}
        self._prefix = prefix
        self._seen: set[str] = set()

    def get(self, key: str, parse: Callable[[str, Any], T], default: T) -> T:
        self._seen.add(key)
        value = self._raw.get(key)
        if value is None:  # absent, or null from an absent block / unset attr
            return default
        return parse(self._prefix + key, value)

    def reject_unknown(self) -> None:
        unknown = sorted(str(k) for k in self._raw if k not in self._seen)
        if unknown:
            raise ConfigError(self._prefix + unknown[0], f"unknown key (known keys: {', '.join(sorted(self._seen))})")


B = TypeVar("B")


def _block(cls: Callable[..., B], raw: Any, prefix: str, parsers: Mapping[str, Callable[[str, Any], Any]]) -> B:
    """A config block as the dataclass `cls`: each key read with its parser, in this
    order (the first bad key is the one named), an absent key its field's default
    (the defaults live in the field declarations only); any other key refused.
    Each key is its field's name."""
    d = cls()
    r = _Reader(raw, prefix)
    cfg = cls(**{k: r.get(k, parse, getattr(d, k)) for k, parse in parsers.items()})
    r.reject_unknown()
    return cfg


def _kind(value: Any) -> str:
    return {bool: "a bool", int: "a number", float: "a number", str: "a string", list: "a list", dict: "a block"}.get(
        type(value), type(value).__name__
    )


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, f"must be true or false, got {_kind(value)} ({value!r})")
    return value


def _str(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(key, f"must be a string, got {_kind(value)} ({value!r})")
    return value


def _existing_file(key: str, value: Any) -> str:
    # Checked here so a typo is refused by SetConfig, not found on the first Fingerprint.
    path = _str(key, value)
    if not path:
        return path  # "" = off
    if not os.path.isabs(path):
        raise ConfigError(key, f"must be an absolute path, got {path!r}")
    if not os.path.isfile(path):
        raise ConfigError(key, f"{path!r} is not an existing file")
    return path


def _str_set(key: str, value: Any) -> frozenset[str]:
    return frozenset(_str_list(key, value))


def _str_list(key: str, value: Any) -> list[str]:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(key, f"must be a list of strings, got {_kind(value)} ({value!r})")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise ConfigError(key, f"item {i} must be a non-empty string, got {item!r}")
        out.append(item.strip())
    return out


# What a whole number beyond 19 digits counts as (with its sign).
_OUT_OF_RANGE = 10**19


def _int(key: str, value: Any) -> int:
    # cty numbers arrive as int, float, or (when too big for either) a decimal string.
    if isinstance(value, bool):
        raise ConfigError(key, f"must be a whole number, got a bool ({value!r})")
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        import decimal  # only for this rare form (libmpdec is ~0.25 MiB resident)

        try:
            number = decimal.Decimal(value.strip())
        except decimal.InvalidOperation:
            number = None
        # Beyond 19 digits a number is out of every range here, and int() of
        # "1e1000000" would build a million-digit number: SetConfig must answer at once.
        if number is not None and number.is_finite() and number.adjusted() > 18:
            return _OUT_OF_RANGE if number > 0 else -_OUT_OF_RANGE
        if number is not None and number.is_finite() and number == number.to_integral_value():
            return int(number)
    raise ConfigError(key, f"must be a whole number, got {_kind(value)} ({value!r})")


def _duration_at_least(floor: float) -> Callable[[str, Any], float]:
    def parse(key: str, value: Any) -> float:
        if not isinstance(value, str):
            raise ConfigError(key, f'must be a duration string like "1m" or "30s", got {_kind(value)} ({value!r})')
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise ConfigError(key, str(exc)) from None
        if seconds < floor:
            raise ConfigError(key, f'must be at least {format_duration(floor)}, got "{value}"')
        return seconds

    return parse


def format_duration(seconds: float) -> str:
    """Go duration text for `seconds`, in the largest unit that states it exactly ("1m", "100ms")."""
    ns = round(seconds * 1e9)
    for unit, size in (("h", 3600 * 10**9), ("m", 60 * 10**9), ("s", 10**9), ("ms", 10**6), ("us", 10**3)):
        if ns % size == 0:
            return f"{ns // size}{unit}"
    return f"{ns}ns"


def _choice(options: tuple[str, ...]) -> Callable[[str, Any], str]:
    def parse(key: str, value: Any) -> str:
        if value not in options:
            raise ConfigError(key, f"must be one of {', '.join(repr(o) for o in options)}, got {value!r}")
        return str(value)

    return parse


def _xid_list(key: str, value: Any) -> frozenset[int]:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(key, f"must be a list of XID numbers, got {_kind(value)} ({value!r})")
    xids = set()
    for i, item in enumerate(value):
        try:
            xid = _int(key, item)
        except ConfigError:
            raise ConfigError(key, f"item {i} must be an XID number, got {item!r}") from None
        if not 0 < xid < 2**32:
            raise ConfigError(key, f"item {i} must be an XID between 1 and 4294967295, got {item!r}")
        xids.add(xid)
    return frozenset(xids)


def _health(key: str, value: Any) -> HealthConfig:
    return _block(HealthConfig, value, key + ".", _parsers(_HEALTH_KEYS))


def _absolute_path(key: str, value: Any) -> str:
    path = _str(key, value)
    if not path.startswith("/"):
        raise ConfigError(key, f"must be an absolute path, got {path!r}")
    return path.rstrip("/") or "/"


def _imex_channels(key: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(key, f"must be a list of IMEX channel numbers, got {_kind(value)} ({value!r})")
    channels: list[int] = []
    for i, item in enumerate(value):
        try:
            n = _int(key, item)
        except ConfigError:
            raise ConfigError(key, f"item {i} must be an IMEX channel number, got {item!r}") from None
        if not 0 <= n <= MAX_IMEX_CHANNEL:
            raise ConfigError(key, f"item {i} must be a channel between 0 and {MAX_IMEX_CHANNEL}, got {item!r}")
        if n in channels:
            raise ConfigError(key, f"item {i}: channel {n} is listed twice")
        channels.append(n)
    return tuple(sorted(channels))  # one order, so equal configs compare equal


def _reserve(key: str, value: Any) -> ReserveConfig:
    cfg = _block(ReserveConfig, value, key + ".", _parsers(_RESERVE_KEYS))
    _check_cdi(key, cfg)
    return cfg


def _spec_dirs(key: str, value: Any) -> tuple[str, ...]:
    dirs = [_absolute_path(key, d) for d in _str_list(key, value)]
    if not dirs:
        raise ConfigError(key, "must name at least one directory")
    return tuple(dict.fromkeys(dirs))


def _check_cdi(key: str, cfg: ReserveConfig) -> None:
    if not cfg.cdi:
        return
    if cfg.device_nodes:
        raise ConfigError(f"{key}.device_nodes", "cannot be true with cdi = true: the CDI spec lists the device nodes")
    readable = [d for d in cfg.cdi_spec_dirs if os.path.isdir(d) and os.access(d, os.R_OK | os.X_OK)]
    if not readable:
        raise ConfigError(f"{key}.cdi_spec_dirs", f"cdi = true, but none of {list(cfg.cdi_spec_dirs)} is a readable "
                          "directory (write the spec with `nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`)")


def _shares(key: str, value: Any) -> int:
    n = _int(key, value)
    if not 1 <= n <= MAX_SHARES:
        raise ConfigError(key, f"must be between 1 and {MAX_SHARES}, got {value!r}")
    return n


def _group_by(key: str, value: Any) -> tuple[str, ...]:
    chosen = set(_str_list(key, value))
    unknown = sorted(chosen - set(GROUP_BY))
    if unknown:
        raise ConfigError(key, f"groups can be split by {' and '.join(map(repr, GROUP_BY))} only, got {unknown[0]!r}")
    return tuple(k for k in GROUP_BY if k in chosen)  # one order, so equal configs compare equal


def _sharing(key: str, value: Any) -> SharingConfig:
    return _block(SharingConfig, value, key + ".", _parsers(_SHARING_KEYS))


def _mps_directory(key: str, value: Any) -> str:
    path = _str(key, value)
    if not path:
        return path  # "" = not set (the agent's default for the top-level keys)
    if not os.path.isabs(path):
        raise ConfigError(key, f"must be an absolute path, got {path!r}")
    return os.path.normpath(path)


def _mps_device(key: str, value: Any) -> MpsDeviceConfig:
    r = _Reader(value, key + ".")
    uuid = r.get("uuid", _str, "").strip()
    pipe = r.get("mps_pipe_directory", _mps_directory, "")
    log_dir = r.get("mps_log_directory", _mps_directory, "")
    r.reject_unknown()
    if not uuid:
        raise ConfigError(key + ".uuid", "must be the UUID of a GPU")
    if uuid.startswith("MIG-"):
        # HashiCorp's rule, kept: MPS is offered on whole GPUs only.
        raise ConfigError(key + ".uuid", f"{uuid!r} is a MIG instance; MPS is for whole GPUs, not MIG instances")
    if not pipe:
        raise ConfigError(key + ".mps_pipe_directory", "must be set (an absolute path)")
    return MpsDeviceConfig(uuid=uuid, mps_pipe_directory=pipe, mps_log_directory=log_dir or MPS_LOG_DIRECTORY)


def _mps_devices(key: str, value: Any) -> tuple[MpsDeviceConfig, ...]:
    if isinstance(value, Mapping):
        value = [value]  # one block given as an object
    if not isinstance(value, (list, tuple)):
        raise ConfigError(key, f"must be a list of blocks, got {_kind(value)} ({value!r})")
    if len(value) > MAX_MPS_DEVICES:
        raise ConfigError(key, f"at most {MAX_MPS_DEVICES} entries, got {len(value)}")
    entries: list[MpsDeviceConfig] = []
    for i, item in enumerate(value):
        entry = _mps_device(f"{key}[{i}]", item)
        if any(e.uuid == entry.uuid for e in entries):
            raise ConfigError(f"{key}[{i}].uuid", f"GPU {entry.uuid!r} is listed twice")
        entries.append(entry)
    return tuple(entries)


def _percentage(key: str, value: Any) -> int:
    n = _int(key, value)
    if not 0 <= n <= 100:
        raise ConfigError(key, f"must be between 0 (an equal part) and 100, got {value!r}")
    return n


def _mib(key: str, value: Any) -> int:
    n = _int(key, value)
    if not 0 <= n < 2**40:
        raise ConfigError(key, f"must be a number of MiB, 0 (an equal part) or more, got {value!r}")
    return n


def _mps_user(key: str, value: Any) -> str:
    user = _str(key, value).strip()
    if user and (not user.isprintable() or any(c.isspace() for c in user)):
        raise ConfigError(key, f"must be a user name, got {user!r}")
    return user


def _mps(key: str, value: Any) -> MpsConfig:
    d = MpsConfig()
    r = _Reader(value, key + ".")
    pipe = r.get("mps_pipe_directory", _mps_directory, "")
    log_dir = r.get("mps_log_directory", _mps_directory, "")
    devices = r.get("device_specific_mps_config", _mps_devices, d.device_specific_mps_config)
    cfg = MpsConfig(
        enabled=r.get("enabled", _bool, d.enabled),
        mps_user=r.get("mps_user", _mps_user, d.mps_user),
        mps_pipe_directory=pipe or d.mps_pipe_directory,
        mps_log_directory=log_dir or d.mps_log_directory,
        device_specific_mps_config=devices,
        active_thread_percentage=r.get("active_thread_percentage", _percentage, d.active_thread_percentage),
        pinned_device_mem_limit_mib=r.get("pinned_device_mem_limit_mib", _mib, d.pinned_device_mem_limit_mib),
    )
    r.reject_unknown()
    if devices and (pipe or log_dir):
        both = f"{key}.mps_pipe_directory" if pipe else f"{key}.mps_log_directory"
        raise ConfigError(
            f"{key}.device_specific_mps_config",
            f"cannot be set together with {both}: set the directories per GPU, or once for every GPU",
        )
    return cfg


# The plain keys of each block (a key is its field's name): the parser of the agent's
# value and the key's HCL type. Reading the config and its schema both go by these,
# so no key is read but missing from the schema, or the other way round. In reading
# order: with several bad keys, the first is the one named.
_Keys = Mapping[str, tuple[Callable[[str, Any], Any], str]]
_TOP_KEYS: _Keys = {
    "enabled": (_bool, "bool"),
    "ignored_gpu_ids": (_str_set, "list(string)"),
    "fingerprint_period": (_duration_at_least(MIN_FINGERPRINT_PERIOD), "string"),
    "nvml_library": (_existing_file, "string"),
    "simulate": (_existing_file, "string"),
    "stats_engine": (_choice(STATS_ENGINES), "string"),
    "extended_stats": (_bool, "bool"),
    "group_by": (_group_by, "list(string)"),
}
_HEALTH_KEYS: _Keys = {
    "enabled": (_bool, "bool"),
    "ignored_xids": (_xid_list, "list(number)"),
    "probe_interval": (_duration_at_least(MIN_PROBE_INTERVAL), "string"),
    "call_timeout": (_duration_at_least(MIN_CALL_TIMEOUT), "string"),
}
_RESERVE_KEYS: _Keys = {
    "cuda_visible_devices": (_bool, "bool"),
    "device_nodes": (_bool, "bool"),
    "dev_root": (_absolute_path, "string"),
    "mig_capabilities_root": (_absolute_path, "string"),
    "imex_channels": (_imex_channels, "list(number)"),
    "gds": (_bool, "bool"),
    "mofed": (_bool, "bool"),
    "gdrcopy": (_bool, "bool"),
    "cdi": (_bool, "bool"),
    "cdi_spec_dirs": (_spec_dirs, "list(string)"),
}
_SHARING_KEYS: _Keys = {"shares": (_shares, "number")}


def _parsers(keys: _Keys) -> dict[str, Callable[[str, Any], Any]]:
    return {k: parse for k, (parse, _) in keys.items()}


def _hcl_default(value: Any) -> Any:
    """A field's default in the agent's form: sets sorted, tuples as lists, durations (the
    config's only floats) as duration strings."""
    if isinstance(value, frozenset):
        return sorted(value)
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, float):
        return format_duration(value)
    return value


def _attrs(defaults: object, keys: _Keys) -> dict[str, hclspec.Spec]:
    return {k: hclspec.attr(k, type_, _hcl_default(getattr(defaults, k))) for k, (_, type_) in keys.items()}


def config_spec() -> hclspec.Spec:
    """The HCL schema, with a default for every key (the agent fills them in).

    Defaults come from the dataclasses, in the agent's form, so the two cannot drift.
    """
    a = hclspec.attr
    d = NvidiaConfig()
    m = d.mps
    return hclspec.obj(
        {
            **_attrs(d, _TOP_KEYS),
            "health": hclspec.block("health", hclspec.obj(_attrs(d.health, _HEALTH_KEYS))),
            "reserve": hclspec.block("reserve", hclspec.obj(_attrs(d.reserve, _RESERVE_KEYS))),
            "sharing": hclspec.block("sharing", hclspec.obj(_attrs(d.sharing, _SHARING_KEYS))),
            "mps": hclspec.block(
                "mps",
                hclspec.obj(
                    {
                        "enabled": a("enabled", "bool", m.enabled),
                        "mps_user": a("mps_user", "string", m.mps_user),
                        # "" in the agent's form: set or not is told apart (the two
                        # directories and the per-GPU list exclude each other).
                        "mps_pipe_directory": a("mps_pipe_directory", "string", ""),
                        "mps_log_directory": a("mps_log_directory", "string", ""),
                        "device_specific_mps_config": hclspec.block_list(
                            "device_specific_mps_config",
                            hclspec.obj(
                                {
                                    "uuid": a("uuid", "string", required=True),
                                    "mps_pipe_directory": a("mps_pipe_directory", "string", required=True),
                                    "mps_log_directory": a("mps_log_directory", "string", ""),
                                }
                            ),
                        ),
                        "active_thread_percentage": a("active_thread_percentage", "number", m.active_thread_percentage),
                        "pinned_device_mem_limit_mib": a(
                            "pinned_device_mem_limit_mib", "number", m.pinned_device_mem_limit_mib
                        ),
                    }
                ),
            ),
        }
    )
