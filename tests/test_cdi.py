"""CDI mode of Reserve: `reserve { cdi = true }` answers with the device
nodes, mounts and environment of NVIDIA's CDI spec, and never NVIDIA_VISIBLE_DEVICES.

The spec under test is the one NVIDIA's own `nvidia-ctk cdi generate` (v1.20.2, built
from the Go module proxy into build/bin) writes for the simulated GPUs, on a stand-in
driver root (tests/e2e/cdi_node.py). The CDI library runtimes use
(tags.cncf.io/container-device-interface, in tests/cdicheck) validates it and says
what a CDI-aware runtime would do for each device; Reserve, driven by Nomad's client
code (the Go harness), must hand Nomad exactly that, with the hooks Nomad cannot run
replaced as docs/containers.md says. The first tests read hand-written specs for the
cases nvidia-ctk does not produce (JSON, index names, broken files, priorities).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e import cdi_node
from nomad_device_nvidia.nvidia import cdi
from nomad_device_nvidia.nvidia.config import NvidiaConfig, config_spec
from nomad_device_nvidia.nvidia.fingerprint import GpuDevice
from nomad_device_nvidia.nvidia.reserve import reservation
from nomad_device_nvidia.sdk import ConfigError, DeviceSpec, Mount, ReservationRefused

REPO = Path(__file__).resolve().parent.parent
SCENARIO = REPO / "tests" / "scenarios" / "matrix-2gpu.toml"
MIG_SCENARIO = REPO / "scenarios" / "8xh100-mig.toml"  # GPUs 6 and 7 in MIG mode, 4 instances each
DRIVER_VERSION = "550.90.07"  # the scenario's
UUID0 = "GPU-11111111-2222-3333-4444-555555555555"
UUID1 = "GPU-66666666-7777-8888-9999-000000000000"
MIG = "MIG-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"


def gpu(uuid: str, index: int, mig: int = -1) -> GpuDevice:
    return GpuDevice(id=uuid, name="H100", pci_bus_id="", slot=(index, mig), attributes={}, minor=index)


def spec(devices: dict[str, dict[str, Any]], common: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "cdiVersion": "0.5.0",
        "kind": "nvidia.com/gpu",
        "devices": [{"name": n, "containerEdits": e} for n, e in devices.items()],
        "containerEdits": common or {},
    }


def node(n: int) -> dict[str, Any]:
    return {"path": f"/dev/nvidia{n}", "hostPath": f"/host/dev/nvidia{n}", "major": 195, "minor": n}


COMMON = {
    "env": ["NVIDIA_VISIBLE_DEVICES=void", "NVIDIA_CTK_LIBCUDA_DIR=/usr/lib64"],
    "deviceNodes": [{"path": "/dev/nvidiactl", "permissions": "rw"}],
    "mounts": [{"hostPath": "/host/lib/libcuda.so.550.90.07", "containerPath": "/usr/lib64/libcuda.so.550.90.07",
                "options": ["ro", "nosuid", "nodev", "bind"]},
               {"hostPath": "/host/data", "containerPath": "/data", "options": ["rw", "bind"]}],
    "hooks": [
        {"hookName": "createContainer", "path": "/usr/bin/nvidia-cdi-hook",
         "args": ["nvidia-cdi-hook", "create-symlinks", "--link", "libcuda.so.1::/usr/lib64/libcuda.so",
                  "--link", "libcuda.so.550.90.07::/usr/lib64/libcuda.so.1", "--link", "nowhere.so::/usr/lib64/x.so"]},
        {"hookName": "createContainer", "path": "/usr/bin/nvidia-cdi-hook",
         "args": ["nvidia-cdi-hook", "update-ldcache", "--folder", "/usr/lib64", "--folder", "/opt/nv"]},
        {"hookName": "createContainer", "path": "/usr/bin/nvidia-cdi-hook",
         "args": ["nvidia-cdi-hook", "enable-cuda-compat", "--host-driver-version=550.90.07"]},
    ],
}


def write(path: Path, content: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content) if path.suffix == ".json" else yaml.safe_dump(content))
    return path


def cdi_config(dirs: list[Path], **keys: Any) -> NvidiaConfig:
    return NvidiaConfig.from_mapping({"reserve": {"cdi": True, "cdi_spec_dirs": [str(d) for d in dirs], **keys}})


# ---- hand-written specs ----------------------------------------------------------


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_the_specs_edits_by_uuid_and_index_and_no_visible_devices(tmp_path: Path, suffix: str,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    # uuid names for one GPU, index names ("1", "0:2" for a MIG device) for the others.
    write(tmp_path / "cdi" / f"nvidia{suffix}", spec(
        {UUID0: {"deviceNodes": [node(0)], "env": ["GPU0=yes"]}, "1": {"deviceNodes": [node(1)]},
         "0:2": {"deviceNodes": [{"path": "/dev/nvidia-caps/nvidia-cap21"}]}}, COMMON))
    cfg = cdi_config([tmp_path / "cdi"], cuda_visible_devices=True)
    with caplog.at_level(logging.WARNING):
        res = reservation([gpu(UUID0, 0), gpu(UUID1, 1), gpu(MIG, 0, 2)], cfg.reserve)
        again = reservation([gpu(UUID0, 0), gpu(UUID1, 1), gpu(MIG, 0, 2)], cfg.reserve)
    assert res == again
    assert res.envs == {
        "NVIDIA_CTK_LIBCUDA_DIR": "/usr/lib64", "GPU0": "yes", "LD_LIBRARY_PATH": "/usr/lib64:/opt/nv",
        "CUDA_VISIBLE_DEVICES": f"{UUID0},{UUID1},{MIG}",
    }
    assert res.devices == (
        DeviceSpec("/dev/nvidiactl", "/dev/nvidiactl", "rw"),
        DeviceSpec("/dev/nvidia0", "/host/dev/nvidia0", "rwm"),
        DeviceSpec("/dev/nvidia1", "/host/dev/nvidia1", "rwm"),
        DeviceSpec("/dev/nvidia-caps/nvidia-cap21", "/dev/nvidia-caps/nvidia-cap21", "rwm"),
    )
    lib = "/host/lib/libcuda.so.550.90.07"
    assert res.mounts == (
        Mount("/usr/lib64/libcuda.so.550.90.07", lib, True),
        Mount("/data", "/host/data", False),
        # The create-symlinks hook's links, each the file its chain of links ends at.
        Mount("/usr/lib64/libcuda.so", lib, True),
        Mount("/usr/lib64/libcuda.so.1", lib, True),
    )
    # What Nomad cannot stand in for is logged once, however many Reserves meet it.
    logged = [r.getMessage() for r in caplog.records]
    assert sum("enable-cuda-compat" in m and "cannot run under Nomad" in m for m in logged) == 1, logged
    assert sum("/usr/lib64/x.so -> /usr/lib64/nowhere.so leads to no mounted file" in m for m in logged) == 1, logged


def test_a_device_missing_from_the_spec_is_refused_naming_file_and_device(tmp_path: Path) -> None:
    path = write(tmp_path / "cdi" / "nvidia.yaml", spec({UUID0: {"deviceNodes": [node(0)]}}))
    cfg = cdi_config([tmp_path / "cdi"])
    with pytest.raises(ReservationRefused) as err:
        reservation([gpu(UUID0, 0), gpu(UUID1, 1)], cfg.reserve)
    assert f"{UUID1} (index 1) not found in the CDI specs ({path})" in str(err.value)
    assert UUID0 not in str(err.value)


def test_no_spec_and_specs_of_other_kinds(tmp_path: Path) -> None:
    d = tmp_path / "cdi"
    write(d / "other.json", {**spec({UUID0: {}}), "kind": "vendor.example/fpga"})
    (d / "notes.txt").write_text("not a spec")
    cfg = cdi_config([d, tmp_path / "absent"])
    with pytest.raises(ReservationRefused) as err:
        reservation([gpu(UUID0, 0)], cfg.reserve)
    assert f"no nvidia.com/gpu spec in {d}, {tmp_path / 'absent'}" in str(err.value)


def test_an_unreadable_spec_is_named_and_a_fixed_one_read_again(tmp_path: Path) -> None:
    path = tmp_path / "cdi" / "nvidia.yaml"
    path.parent.mkdir()
    path.write_text("cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices: [\n")
    cfg = cdi_config([path.parent])
    with pytest.raises(ReservationRefused) as err:
        reservation([gpu(UUID0, 0)], cfg.reserve)
    assert f"{UUID0} (index 0) not found" in str(err.value)
    assert f"unreadable: {path}: not valid YAML" in str(err.value)
    # A spec that parses but is not one: the field is named.
    path.write_text(yaml.safe_dump({**spec({UUID0: {}}), "devices": [{"name": UUID0, "containerEdits": {
        "deviceNodes": [{"path": "dev/nvidia0"}]}}]}))
    with pytest.raises(ReservationRefused, match=r"devices\[0\]\.containerEdits\.deviceNodes\[0\]: paths must be absolute"):
        reservation([gpu(UUID0, 0)], cfg.reserve)
    # Rewritten (a new mtime and size): read again, no restart.
    write(path, spec({UUID0: {"deviceNodes": [node(0)]}}))
    assert reservation([gpu(UUID0, 0)], cfg.reserve).devices == (DeviceSpec("/dev/nvidia0", "/host/dev/nvidia0", "rwm"),)


def test_a_later_directory_wins(tmp_path: Path) -> None:
    # CDI's order: /etc/cdi, then /var/run/cdi, which overrides it.
    write(tmp_path / "etc" / "nvidia.yaml", spec({UUID0: {"deviceNodes": [node(0)]}}))
    write(tmp_path / "run" / "nvidia.json", spec({UUID0: {"deviceNodes": [node(7)]}}))
    res = reservation([gpu(UUID0, 0)], cdi_config([tmp_path / "etc", tmp_path / "run"]).reserve)
    assert [d.host_path for d in res.devices] == ["/host/dev/nvidia7"]


# ---- config --------------------------------------------------------------------


def test_config_defaults_and_schema() -> None:
    cfg = NvidiaConfig().reserve
    assert (cfg.cdi, cfg.cdi_spec_dirs) == (False, ("/etc/cdi", "/var/run/cdi"))
    attrs = config_spec().object.attributes["reserve"].block_value.nested.object.attributes
    assert {"cdi", "cdi_spec_dirs"} <= set(attrs)


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"cdi": "yes"}, 'config key "reserve.cdi": must be true or false'),
        ({"cdi_spec_dirs": "/etc/cdi"}, 'config key "reserve.cdi_spec_dirs": must be a list of strings'),
        ({"cdi_spec_dirs": ["etc/cdi"]}, 'config key "reserve.cdi_spec_dirs": must be an absolute path'),
        ({"cdi_spec_dirs": []}, 'config key "reserve.cdi_spec_dirs": must name at least one directory'),
        ({"cdi": True, "cdi_spec_dirs": ["/nonexistent/cdi"]},
         "config key \"reserve.cdi_spec_dirs\": cdi = true, but none of ['/nonexistent/cdi'] is a readable directory"),
        ({"cdi": True, "device_nodes": True, "cdi_spec_dirs": ["/"]}, 'config key "reserve.device_nodes": cannot be true'),
    ],
)
def test_bad_cdi_keys_are_refused_naming_the_key(keys: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        NvidiaConfig.from_mapping({"reserve": keys})
    assert message in str(err.value)


# ---- nvidia-ctk's spec, the CDI library, and Reserve through Nomad's client code ----

def sim_uuids() -> list[str]:
    """The scenario's GPU UUIDs in NVML's index order, as the simulated library reports them."""
    return [g["uuid"] for g in cdi_node.sim_gpus(SCENARIO)]


@pytest.fixture(scope="module")
def node_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.geteuid() != 0:
        pytest.fail("the stand-in driver's device nodes are made with mknod, which needs root")
    assert cdi_node.SIM_LIB.is_file(), f"no simulated NVML at {cdi_node.SIM_LIB}: run `make sim`"
    cdi_node.ensure_tools()
    root = tmp_path_factory.mktemp("cdinode")
    cdi_node.stand_in_driver(root, DRIVER_VERSION, [0, 1])
    return root


def _harness_reserve(run_harness: Callable[..., Any], plugin_bin: Path, tmp: Path, spec_dir: Path,
                     ids: list[str], scenario: Path = SCENARIO) -> dict[str, Any]:
    conf = tmp / "plugin.hcl"
    conf.write_text(f"""config {{
  simulate = {json.dumps(str(scenario))}
  nvml_library = {json.dumps(str(cdi_node.SIM_LIB))}
  reserve {{
    cdi = true
    cdi_spec_dirs = [{json.dumps(str(spec_dir))}]
  }}
}}
""")
    run = run_harness("session", "--plugin", plugin_bin, "--config", conf, "--reserve", ",".join(ids)).ok()
    event = run.one("reserve")
    assert event["error"] in (None, ""), run.describe()
    return dict(event["reservation"])


def _expected(injected: dict[str, Any], root: Path) -> dict[str, Any]:
    """What Reserve must give for the CDI library's injection: its env without
    NVIDIA_VISIBLE_DEVICES and with the ldcache folders on LD_LIBRARY_PATH, its
    device nodes and mounts, and for each create-symlinks link the host file the
    link leads to, found by making the links for real under `root` and letting the
    kernel follow them."""
    env = dict(e.split("=", 1) for e in injected["env"])
    env.pop("NVIDIA_VISIBLE_DEVICES")
    hooks = [h["args"] for stage in (injected["hooks"] or {}).values() for h in stage]
    folders = [a[i + 1] for a in hooks if a[1] == "update-ldcache" for i, x in enumerate(a) if x == "--folder"]
    assert folders, hooks
    env["LD_LIBRARY_PATH"] = ":".join(dict.fromkeys(folders))
    mounts = {m["destination"]: (m["source"], "ro" in m["options"]) for m in injected["mounts"]}
    tree = root / "tree"
    for dst, (src, _) in mounts.items():
        (tree / dst.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (tree / dst.lstrip("/")).symlink_to(src)
    links = [a[i + 1].split("::") for a in hooks if a[1] == "create-symlinks" for i, x in enumerate(a) if x == "--link"]
    assert links, hooks
    for target, link in links:
        at = tree / link.lstrip("/")
        at.parent.mkdir(parents=True, exist_ok=True)
        if not at.is_symlink():
            at.symlink_to(target)
    for _, link in links:
        if link not in mounts:
            mounts[link] = (os.path.realpath(tree / link.lstrip("/")), True)
    cgroup = {(r["major"], r["minor"]): r["access"] for r in injected["cgroup"]}
    devices = {(d["path"], d["major"], d["minor"], cgroup[(d["major"], d["minor"])]) for d in injected["devices"]}
    return {"env": env, "mounts": mounts, "devices": devices}


def _got(res: dict[str, Any]) -> dict[str, Any]:
    devices = set()
    for d in res["devices"]:
        st = os.stat(d["host_path"])
        devices.add((d["task_path"], os.major(st.st_rdev), os.minor(st.st_rdev), d["cgroup_perms"]))
    mounts = {m["task_path"]: (m["host_path"], m["read_only"]) for m in res["mounts"]}
    assert len(mounts) == len(res["mounts"]), "a task path mounted twice"
    return {"env": res["envs"], "mounts": mounts, "devices": devices}


@pytest.mark.parametrize("strategy", ["uuid", "index"])
def test_reserve_gives_what_the_cdi_library_injects_for_nvidia_ctks_spec(
    node_root: Path, tmp_path: Path, strategy: str, run_harness: Callable[..., Any], plugin_bin: Path
) -> None:
    spec_dir = tmp_path / "cdi"
    cdi_node.generate_spec(node_root / "driver", spec_dir / "nvidia.yaml", SCENARIO, strategy)
    uuids = sim_uuids()
    names = uuids if strategy == "uuid" else [str(i) for i in range(len(uuids))]
    # The CDI library reads nvidia-ctk's spec without complaint, and it names every GPU.
    rc, listing = cdi_node.cdicheck("validate", str(spec_dir))
    assert rc == 0, listing
    assert set(listing["devices"]) == {f"nvidia.com/gpu={n}" for n in [*names, "all"]}

    for picked in ([1], [0, 1]):
        res = _harness_reserve(run_harness, plugin_bin, tmp_path, spec_dir, [uuids[i] for i in picked])
        rc, injected = cdi_node.cdicheck("inject", "--dirs", str(spec_dir), *[f"nvidia.com/gpu={names[i]}" for i in picked])
        assert rc == 0, injected
        want, got = _expected(injected, tmp_path / f"tree-{len(picked)}"), _got(res)
        assert "NVIDIA_VISIBLE_DEVICES" not in got["env"]
        assert got == want
        # Each picked GPU's own node, the control nodes, no other GPU's node.
        gpu_nodes = {d[0] for d in got["devices"] if d[0].removeprefix("/dev/nvidia").isdigit()}
        assert gpu_nodes == {f"/dev/nvidia{i}" for i in picked}
        # Every mounted driver file is a real host file, the libraries reachable by their sonames.
        assert all(os.path.exists(src) for src, _ in got["mounts"].values())
        assert got["mounts"]["/usr/lib/x86_64-linux-gnu/libcuda.so.1"][0].endswith(f"libcuda.so.{DRIVER_VERSION}")


def test_cdi_true_without_a_spec_directory_is_refused_and_the_last_good_config_kept(
    tmp_path: Path, run_harness: Callable[..., Any], plugin_bin: Path
) -> None:
    good, bad = tmp_path / "good.hcl", tmp_path / "bad.hcl"
    (tmp_path / "cdi").mkdir()
    for path, d in ((good, tmp_path / "cdi"), (bad, tmp_path / "absent")):
        path.write_text(f"config {{\n  simulate = {json.dumps(str(SCENARIO))}\n"
                        f"  nvml_library = {json.dumps(str(cdi_node.SIM_LIB))}\n"
                        f"  reserve {{\n    cdi = true\n    cdi_spec_dirs = [{json.dumps(str(d))}]\n  }}\n}}\n")
    run = run_harness("configs", "--plugin", plugin_bin, "--step", f"hcl:{good}", "--step", f"hcl:{bad}",
                      "--step", "probe").ok()
    first, second = run.of("set_config")
    assert first["error"] is None, run.describe()
    assert '"reserve.cdi_spec_dirs"' in second["error"] and str(tmp_path / "absent") in second["error"]
    assert run.one("probe")["info_error"] is None


@pytest.fixture(scope="module")
def mig_node(node_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]], str]:
    root = tmp_path_factory.mktemp("cdimig")
    gpus = cdi_node.sim_gpus(MIG_SCENARIO)
    driver = cdi_node.stand_in_driver(root, DRIVER_VERSION, [g["minor"] for g in gpus])
    return driver, gpus, cdi_node.mig_minors(driver, gpus)


@pytest.mark.parametrize("strategy", ["uuid", "index"])
def test_mig_instances_by_uuid_and_by_index_in_nvidia_ctks_spec(
    mig_node: tuple[Path, list[dict[str, Any]], str], tmp_path: Path, strategy: str,
    run_harness: Callable[..., Any], plugin_bin: Path
) -> None:
    driver, gpus, minors = mig_node
    spec_dir = tmp_path / "cdi"
    cdi_node.generate_spec(driver, spec_dir / "nvidia.yaml", MIG_SCENARIO, strategy, minors)
    # A whole GPU and two MIG instances of different GPUs; index names are "GPU:MIG".
    picked = [(gpus[0], None), (gpus[6], gpus[6]["mig"][1]), (gpus[7], gpus[7]["mig"][3])]
    ids = [m["uuid"] if m else g["uuid"] for g, m in picked]
    names = ids if strategy == "uuid" else [f"{g['index']}:{m['index']}" if m else str(g["index"]) for g, m in picked]
    rc, listing = cdi_node.cdicheck("validate", str(spec_dir))
    assert rc == 0, listing
    assert {f"nvidia.com/gpu={n}" for n in names} <= set(listing["devices"])

    res = _harness_reserve(run_harness, plugin_bin, tmp_path, spec_dir, ids, MIG_SCENARIO)
    rc, injected = cdi_node.cdicheck("inject", "--dirs", str(spec_dir), *[f"nvidia.com/gpu={n}" for n in names])
    assert rc == 0, injected
    got = _got(res)
    assert got == _expected(injected, tmp_path / "tree")
    # Each MIG instance brings its parent's node and its GPU- and compute-instance capability nodes.
    caps = {line.split()[0]: int(line.split()[1]) for line in minors.splitlines()}
    want_caps = set()
    for g, m in picked:
        if m:
            gi = f"gpu{g['minor']}/gi{m['gi']}"
            for cap in (f"{gi}/access", f"{gi}/ci{m['ci']}/access"):
                want_caps.add(f"/dev/nvidia-caps/nvidia-cap{caps[cap]}")
    nodes = {d[0] for d in got["devices"]}
    assert want_caps <= nodes
    assert {p for p in nodes if p.startswith("/dev/nvidia-caps/")} == want_caps
    assert {p for p in nodes if p.removeprefix("/dev/nvidia").isdigit()} == {"/dev/nvidia0", "/dev/nvidia6", "/dev/nvidia7"}
