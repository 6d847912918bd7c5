"""Calibration files and the calibration folder are safe and cheap: files are read by name only
(regular files directly inside the folder, bounded size, bounded JSON nesting, every key the pack
reads checked), the node dropdowns list names without parsing every file on each /object_info, and a
listed name can always be selected. Hang and memory cases run in a bounded subprocess; the
/object_info case on a real ComfyUI server with a hostile folder."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from comfyui_magcache.magcache_core import MagCacheInputError
from comfyui_magcache.magcache_core.storage import CalibrationStore
from comfyui_magcache.nodes.magcache_nodes import (CALIBRATION_PREFIX, MagCacheApply, MagCacheRatios,
                                                   calibration_store, resolve_curves)
from comfyui_magcache.nodes.teacache_nodes import TeaCacheApply, resolve_coefficients
from comfyui_magcache.strategies import detect
from tiny_models import tiny_wan

ROOT = Path(__file__).resolve().parents[1]
STATS = {"cond": {"ratio": [1.0, 0.99, 0.98, 0.97], "std": [0, 0.1, 0.1, 0.1], "cos": [0, 0.2, 0.1, 0.1]}}
TEA = {"teacache": {"coefficients": [1.0, 0.0]}}
DEEP = "[" * 100_000 + "]" * 100_000
HUGE = 256 * 1024 * 1024             # sparse: costs no disk, far above any sane calibration file


@pytest.fixture
def folder():
    """The nodes' calibration folder (a temp user directory, see conftest), emptied after each test."""
    store = calibration_store()
    shutil.rmtree(store.folder, ignore_errors=True)
    os.makedirs(store.folder)
    yield Path(store.folder)
    shutil.rmtree(store.folder, ignore_errors=True)


@pytest.fixture(scope="module")
def wan():
    return detect(tiny_wan())


def good_doc(name="good") -> dict:
    """A valid saved calibration (written by the store itself), as a dict to edit."""
    scratch = CalibrationStore(str(Path(calibration_store().folder).parent / "scratch"))
    path = scratch.save(name, "wan", 4, STATS, TEA)
    doc = json.loads(Path(path).read_text())
    shutil.rmtree(scratch.folder)
    return doc


def write(folder: Path, file_name: str, doc) -> Path:
    path = folder / file_name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def preset_lists() -> tuple[list, list]:
    """The MagCacheApply and TeaCacheApply preset dropdowns, as /object_info builds them."""
    return (MagCacheApply.INPUT_TYPES()["required"]["preset"][0],
            TeaCacheApply.INPUT_TYPES()["required"]["preset"][0])


# -- schema ---------------------------------------------------------------------------------------
def test_file_without_name_is_a_clear_error(folder, wan):
    doc = good_doc()
    del doc["name"]
    path = write(folder, "nameless.json", doc)
    with pytest.raises(MagCacheInputError) as e:
        calibration_store().load("nameless")
    assert str(path) in str(e.value) and "'name'" in str(e.value)
    for resolve in (lambda: resolve_curves(wan, None, CALIBRATION_PREFIX + "nameless", None),
                    lambda: resolve_coefficients(wan, None, CALIBRATION_PREFIX + "nameless")):
        with pytest.raises(MagCacheInputError, match=r"^preset: .*nameless\.json.*'name'"):
            resolve()


@pytest.mark.parametrize("key, value", [("name", 7), ("steps", None), ("steps", True), ("steps", "4"),
                                        ("version", True)])
def test_file_with_a_bad_key_names_the_file_and_the_key(folder, key, value):
    doc = good_doc()
    if value is None:
        del doc[key]
    else:
        doc[key] = value
    path = write(folder, "bad.json", doc)
    with pytest.raises(MagCacheInputError) as e:
        calibration_store().load("bad")
    assert str(path) in str(e.value) and f"'{key}" in str(e.value), str(e.value)


# -- nesting --------------------------------------------------------------------------------------
def test_deeply_nested_json_in_the_folder_is_a_clear_error(folder, wan):
    write(folder, "good.json", good_doc())
    write(folder, "deep.json", DEEP)
    write(folder, "deep_ratios.json", json.dumps(good_doc())[:-1] + ', "extra": ' + DEEP + "}")
    for name in ("deep", "deep_ratios"):
        with pytest.raises(MagCacheInputError, match=rf"{name}\.json.*nested more than \d+ levels"):
            calibration_store().load(name)
        with pytest.raises(MagCacheInputError, match=r"^preset: .*nested"):
            resolve_curves(wan, None, CALIBRATION_PREFIX + name, None)
    magcache, teacache = preset_lists()              # listing never raises: the node stays in /object_info
    assert CALIBRATION_PREFIX + "good" in teacache and CALIBRATION_PREFIX + "deep" not in teacache
    assert CALIBRATION_PREFIX + "good" in magcache


@pytest.mark.parametrize("text", [DEEP, '{"cond": ' * 50_000 + "[1, 2]" + "}" * 50_000,
                                  "[" * 40 + "1.0, 2.0" + "]" * 40])
def test_deeply_nested_json_in_magcache_ratios_is_a_clear_error(text):
    with pytest.raises(MagCacheInputError, match=r"^ratios: .*nested more than \d+ levels"):
        MagCacheRatios().parse(text)


# -- names ----------------------------------------------------------------------------------------
def test_trailing_space_and_dot_names_are_listed_only_if_selectable(folder, wan):
    for file_name in ("trail .json", "dot..json", "ok.v2.json", " lead.json", "new\nline.json", "a  b.json"):
        write(folder, file_name, good_doc())
    store = calibration_store()
    listed = store.names()
    assert "ok.v2" in listed and "a  b" in listed
    magcache, teacache = preset_lists()
    for name in listed:
        store.load(name)                             # every listed name is selectable ...
        assert CALIBRATION_PREFIX + name in magcache and CALIBRATION_PREFIX + name in teacache
        resolve_curves(wan, None, CALIBRATION_PREFIX + name, None)     # ... through both nodes
        resolve_coefficients(wan, None, CALIBRATION_PREFIX + name)
    for preset in magcache[1:] + teacache[1:]:
        if preset.startswith(CALIBRATION_PREFIX):
            assert preset[len(CALIBRATION_PREFIX):] in listed


# -- size -----------------------------------------------------------------------------------------
def test_huge_file_is_a_clear_error_and_listing_is_fast(folder, wan):
    write(folder, "good.json", good_doc())
    with open(folder / "huge.json", "wb") as f:
        f.truncate(HUGE)                             # sparse: reading it would still cost HUGE bytes
    with pytest.raises(MagCacheInputError, match=r"huge\.json.*268435456 bytes.*at most \d+ MiB"):
        calibration_store().load("huge")
    with pytest.raises(MagCacheInputError, match=r"^preset: .*at most \d+ MiB"):
        resolve_coefficients(wan, None, CALIBRATION_PREFIX + "huge")
    start = time.perf_counter()
    for _ in range(3):
        magcache, teacache = preset_lists()
    elapsed = time.perf_counter() - start
    assert CALIBRATION_PREFIX + "good" in teacache and CALIBRATION_PREFIX + "huge" not in teacache
    assert elapsed < 0.3, f"listing the presets 3 times took {elapsed:.2f} s"


# -- links and special files (in a subprocess: before the fix these hang or eat all memory) ---------
BOUNDED = textwrap.dedent("""
    import json, resource, sys
    sys.path.insert(0, sys.argv[1])
    from magcache_core import MagCacheInputError
    from magcache_core.storage import CalibrationStore
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) for line in f if line.startswith("VmSize:")) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), resource.getrlimit(resource.RLIMIT_AS)[1]))
    store = CalibrationStore(sys.argv[2])
    out = {"names": store.names(), "teacache": store.teacache_names()}
    try:
        store.load(sys.argv[3])
        out["load"] = "loaded"
    except MagCacheInputError as e:
        out["load"] = str(e)
    print(json.dumps(out))
""")


def bounded_listing(folder: Path, name: str, timeout: float = 60) -> dict:
    """names(), teacache_names() and load(name) in a subprocess with 1 GB of address space to spare."""
    try:
        proc = subprocess.run([sys.executable, "-c", BOUNDED, str(ROOT), str(folder), name], capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"listing/loading {name!r} hung for {timeout:.0f} s")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_symlink_to_dev_zero_is_not_listed_and_does_not_hang(folder):
    write(folder, "good.json", good_doc())
    (folder / "zero.json").symlink_to("/dev/zero")
    out = bounded_listing(folder, "zero")
    assert out["names"] == ["good"] and out["teacache"] == ["good"]
    assert out["load"].startswith("calibration:") and "zero.json" in out["load"] and "outside" in out["load"]


def test_fifo_in_the_folder_is_not_listed_and_does_not_hang(folder):
    write(folder, "good.json", good_doc())
    os.mkfifo(folder / "fifo.json")
    out = bounded_listing(folder, "fifo")
    assert out["names"] == ["good"] and out["teacache"] == ["good"]
    assert "fifo.json" in out["load"] and "not a regular file" in out["load"]


def test_symlink_to_a_file_outside_is_not_followed(folder, tmp_path, wan):
    write(folder, "good.json", good_doc())
    outside = write(tmp_path, "secret.json", good_doc("secret"))
    (folder / "secret.json").symlink_to(outside)
    (folder / "escape.json").symlink_to(os.path.relpath(outside, folder))
    (folder / "alias.json").symlink_to("good.json")  # a link to a file inside the folder is that file
    store = calibration_store()
    assert store.names() == ["alias", "good"] and store.teacache_names() == ["alias", "good"]
    for name in ("secret", "escape"):
        with pytest.raises(MagCacheInputError, match=rf"{name}\.json.*outside the calibration folder"):
            store.load(name)
        with pytest.raises(MagCacheInputError, match="^preset: .*outside"):
            resolve_coefficients(wan, None, CALIBRATION_PREFIX + name)
    assert store.load("alias")["mag_ratios"] == store.load("good")["mag_ratios"]
    magcache, teacache = preset_lists()
    assert not any("secret" in p or "escape" in p for p in magcache + teacache)


# -- on a real server --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory):
    """A real ComfyUI whose calibration folder holds every hostile case above next to one good file."""
    from comfy_server import ComfyServer
    work = tmp_path_factory.mktemp("comfy-hostile")
    cal = work / "base" / "user" / "magcache" / "calibrations"
    cal.mkdir(parents=True)
    write(cal, "good.json", good_doc())
    nameless = good_doc()
    del nameless["name"]
    write(cal, "nameless.json", nameless)
    write(cal, "deep.json", DEEP)
    write(cal, "trail .json", good_doc())
    with open(cal / "huge.json", "wb") as f:
        f.truncate(HUGE)
    (cal / "zero.json").symlink_to("/dev/zero")
    os.mkfifo(cal / "fifo.json")
    (cal / "outside.json").symlink_to(write(work, "outside.json", good_doc()))
    with ComfyServer.start(work) as srv:
        yield srv


def test_object_info_stays_fast_and_lists_teacache_apply_with_a_hostile_folder(hostile_server):
    for node in ("TeaCacheApply", "MagCacheApply"):
        start = time.perf_counter()
        info = hostile_server.get(f"/object_info/{node}", timeout=60)
        elapsed = time.perf_counter() - start
        assert node in info, f"{node} dropped from /object_info\n{hostile_server.log_tail()}"
        presets = info[node]["input"]["required"]["preset"][0]
        assert CALIBRATION_PREFIX + "good" in presets, presets
        for hostile in ("zero", "fifo", "outside", "trail "):
            assert CALIBRATION_PREFIX + hostile not in presets, presets
        assert elapsed < 1.0, f"/object_info/{node} took {elapsed:.2f} s"
    everything = hostile_server.get("/object_info", timeout=60)
    assert {"TeaCacheApply", "MagCacheApply", "MagCacheCalibrate", "MagCacheRatios"} <= set(everything)
    assert hostile_server.proc.poll() is None
