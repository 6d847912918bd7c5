"""The pack's workflow templates (example_workflows/) in a user's ComfyUI: a real server with the pack
installed and WITHOUT the test-only demo package. Every file there loads, every node type is ComfyUI's
own or the pack's, every value fits what this ComfyUI's /object_info declares, the template browser
lists each one with its thumbnail, and the files are what build_workflows.py generates."""
from __future__ import annotations

import json
import shutil
import urllib.parse

import pytest
from PIL import Image

from comfy_server import (CORE_MODULES, MODEL_FILE_INPUTS, FRONTEND_ONLY, MUTED, PACK_NAME, ROOT, ComfyServer,
                          comfyui_path, combo_choices, template_builder, ui_to_api, workflow_problems)

EXAMPLES = ROOT / "example_workflows"
BUILDERS = {"build_workflows.py", "thumbnails.py"}
NAMES = sorted(p.stem for p in EXAMPLES.glob("*.json"))


def load(name: str) -> dict:
    return json.loads((EXAMPLES / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ComfyServer.start(tmp_path_factory.mktemp("comfy-user"), demo=False) as srv:
        # A user's install has ComfyUI's own input/ (example.png); the test copy leaves it out.
        shutil.copytree(comfyui_path() / "input", srv.base / "input", dirs_exist_ok=True)
        yield srv


@pytest.fixture(scope="module")
def object_info(server):
    return server.get("/object_info")


# -- the folder and the template browser ------------------------------------------------------------
def test_the_folder_holds_templates_thumbnails_and_their_builder():
    """ComfyUI lists every example_workflows/*.json as a template: nothing else may be a .json there."""
    files = {p.name for p in EXAMPLES.iterdir() if p.name != "__pycache__"}
    assert len(NAMES) >= 10
    assert files == {f"{n}.json" for n in NAMES} | {f"{n}.jpg" for n in NAMES} | BUILDERS


def test_the_template_browser_lists_every_template_with_its_thumbnail(server):
    """What the front end fetches: GET /workflow_templates, then each name's .json and .jpg under
    /api/workflow_templates/<pack>/ (the name URL-quoted, as the browser sends it)."""
    listed = server.get("/workflow_templates")
    assert sorted(listed) == [PACK_NAME], listed         # no demo package here
    assert sorted(listed[PACK_NAME]) == NAMES
    for name in NAMES:
        base = f"/api/workflow_templates/{PACK_NAME}/{urllib.parse.quote(name)}"
        status, body = server.request(base + ".json")
        assert status == 200 and body == (EXAMPLES / f"{name}.json").read_bytes(), name
        status, body = server.request(base + ".jpg")
        assert status == 200 and body == (EXAMPLES / f"{name}.jpg").read_bytes(), name
        with Image.open(EXAMPLES / f"{name}.jpg") as im:
            assert im.format == "JPEG" and im.size[0] == im.size[1] >= 256, (name, im.format, im.size)


def test_templates_are_generated_with_current_thumbnails():
    """The committed files are build_workflows.py's output from the pack's current presets, and each
    thumbnail shows what the pack's rule gives today (its spec is kept in the JPEG's comment)."""
    mod = template_builder()
    import thumbnails
    for t in mod.templates():
        wf_path, jpg_path = mod.paths(t)
        assert wf_path.read_text() == mod.render(t), f"{wf_path.name}: run example_workflows/build_workflows.py"
        assert thumbnails.stored_spec(jpg_path) == thumbnails.spec(t), f"{jpg_path.name}: run build_workflows.py"
    assert {mod.paths(t)[0].stem for t in mod.templates() if t.folder == EXAMPLES} == set(NAMES)


# -- each template against a user's server ------------------------------------------------------------
def test_stock_loaders_and_samplers_exist_in_this_comfyui(object_info):
    """The stock nodes the templates use, present on this ComfyUI version (0.3.75 and 0.33 both)."""
    used = {n["type"] for name in NAMES for n in load(name)["nodes"]} - FRONTEND_ONLY
    missing = sorted(used - set(object_info))
    assert not missing, f"not in this ComfyUI: {missing}"


@pytest.mark.parametrize("name", NAMES)
def test_every_node_is_core_or_ours(name, object_info):
    for node in load(name)["nodes"]:
        if node["type"] in FRONTEND_ONLY:
            continue
        assert node["type"] in object_info, f"{node['type']} missing: the template would need another package"
        module = object_info[node["type"]]["python_module"]
        assert module == f"custom_nodes.{PACK_NAME}" or module == "nodes" or module.startswith(CORE_MODULES[1]), \
            (node["type"], module)


def _expected_exceptions(wf: dict) -> dict:
    """(node id, input) -> why a value is not in this fresh server's lists, and may not be."""
    out = {}
    for node in wf["nodes"]:
        models = {m["name"]: m for m in node.get("properties", {}).get("models", [])}
        for i, value in enumerate(node.get("widgets_values") or []):
            if value in models:
                m = models[value]
                assert m["url"].startswith("https://") and m["url"].endswith(value), m
                out[(node["id"], value)] = f"model file, downloaded from {m['url']} into {m['directory']}"
    return out


@pytest.mark.parametrize("name", NAMES)
def test_every_value_is_within_its_declared_range(name, object_info):
    """Every node, muted ones too, against /object_info: widget counts and kinds, combo lists, min..max,
    links and sockets. Model files and the input image are not in a fresh server's lists: each model
    must carry the URL the front end offers to download it from, the image must ship with ComfyUI.
    A muted 'calibration: <name>' preset is the calibration template's second step (tested below)."""
    wf = load(name)
    nodes = {n["id"]: n for n in wf["nodes"]}
    exceptions = _expected_exceptions(wf)
    left = []
    for nid, inp, why in workflow_problems(wf, object_info):
        node = nodes.get(nid, {})
        if inp in MODEL_FILE_INPUTS and any((nid, v) in exceptions and f"{v!r} is not one of" in why
                                      for v in node.get("widgets_values") or []):
            continue
        if node.get("mode") == MUTED and node.get("type") == "MagCacheApply" and inp == "preset" \
                and node["widgets_values"][0].startswith("calibration: "):
            continue
        left.append((nid, node.get("type"), inp, why))
    assert not left, left


@pytest.mark.parametrize("name", NAMES)
def test_the_server_accepts_the_template_as_saved(name, server, object_info):
    """POST /prompt of the template as the front end would queue it (muted nodes left out): the
    server's own validation objects to nothing but the model files this test machine lacks."""
    wf = load(name)
    prompt = ui_to_api(wf, object_info)
    assert len(prompt) == sum(n["type"] not in FRONTEND_ONLY and n.get("mode", 0) == 0 for n in wf["nodes"])
    status, answer = server.post_prompt(prompt)
    assert status == 400, answer
    errors = [(e["type"], e["extra_info"].get("input_name")) for ne in answer["node_errors"].values() for e in ne["errors"]]
    assert errors and all(kind == "value_not_in_list" and inp in MODEL_FILE_INPUTS for kind, inp in errors), errors


@pytest.mark.parametrize("name", NAMES)
def test_magcache_templates_sample_at_their_presets_settings(name, object_info):
    """A template with a MagCache preset samples with the steps its curve was recorded at, CFG > 1
    exactly when the preset has an uncond curve, and the preset's recommended threshold / retention / K."""
    from comfyui_magcache.magcache_core import UNCOND
    from comfyui_magcache.strategies import all_presets
    wf = load(name)
    applies = [n for n in wf["nodes"] if n["type"] == "MagCacheApply" and n.get("mode", 0) == 0]
    samplers = [n for n in wf["nodes"] if n["type"] in ("KSampler", "KSamplerAdvanced") and n.get("mode", 0) == 0]
    if not applies:
        pytest.skip("no MagCache preset in this template")
    for node in applies:
        preset, threshold, retention, k = node["widgets_values"][:4]
        assert preset in object_info["MagCacheApply"]["input"]["required"]["preset"][0]
        p = all_presets()[preset][1]
        assert (threshold, retention, k) == (p.params.threshold, p.params.retention_ratio, p.params.max_skips)
        for s in samplers:
            v = s["widgets_values"]
            steps, cfg = (v[2], v[3]) if s["type"] == "KSampler" else (v[3], v[4])
            assert steps == p.curves.length, (s["id"], steps, p.curves.length)
            assert (cfg != 1.0) == (UNCOND in p.curves.per_kind), (s["id"], cfg)


def test_calibration_template_reuses_the_calibration_it_saves(server, object_info):
    """Step 1 saves a calibration under the name step 2's muted MagCache Apply asks for; once such a
    calibration is in the user folder (where MagCacheCalibrate writes it), /object_info offers it and
    the template with step 1 muted and step 2 live passes the server's validation."""
    from comfyui_magcache.magcache_core.storage import CalibrationStore, check_name
    name = next(n for n in NAMES if any(x["type"] == "MagCacheCalibrate" for x in load(n)["nodes"]))
    wf = load(name)
    calibrate = next(n for n in wf["nodes"] if n["type"] == "MagCacheCalibrate")
    reuse = next(n for n in wf["nodes"] if n["type"] == "MagCacheApply")
    saved = check_name(calibrate["widgets_values"][0])
    assert calibrate.get("mode", 0) == 0 and reuse["mode"] == MUTED
    assert reuse["widgets_values"][0] == f"calibration: {saved}"
    preset_choices = lambda info: combo_choices(info["MagCacheApply"]["input"]["required"]["preset"])  # noqa: E731
    assert f"calibration: {saved}" not in preset_choices(object_info)

    steps = next(n for n in wf["nodes"] if n["type"] == "KSampler" and n.get("mode", 0) == 0)["widgets_values"][2]
    curve = [1.0] + [0.99 - 0.01 * i for i in range(steps - 1)]
    stats = {kind: {"ratio": curve} for kind in ("cond", "uncond")}
    CalibrationStore(str(server.base / "user" / "magcache" / "calibrations")).save(saved, "wan", steps, stats)
    info = server.get("/object_info")
    assert f"calibration: {saved}" in preset_choices(info)

    # What the note asks: mute group 1, un-mute group 2 (a group holds the nodes inside its frame).
    def inside(node, group):
        x, y, w, h = group["bounding"]
        return x <= node["pos"][0] and y <= node["pos"][1] and node["pos"][0] + node["size"][0] <= x + w \
            and node["pos"][1] + node["size"][1] <= y + h
    group1, group2 = (next(g for g in wf["groups"] if inside(node, g)) for node in (calibrate, reuse))
    assert group1 is not group2 and len(wf["groups"]) == 2
    assert {n["id"] for n in wf["nodes"] if n.get("mode") == MUTED} == {n["id"] for n in wf["nodes"] if inside(n, group2)}
    swapped = json.loads(json.dumps(wf))
    for node in swapped["nodes"]:
        node["mode"] = MUTED if inside(node, group1) else 0
    assert not [p for p in workflow_problems(swapped, info) if p[1] not in MODEL_FILE_INPUTS]
    prompt = ui_to_api(swapped, info)
    assert {v["class_type"] for v in prompt.values()} >= {"MagCacheApply", "KSampler"}
    assert "MagCacheCalibrate" not in {v["class_type"] for v in prompt.values()}
    status, answer = server.post_prompt(prompt)
    errors = [(e["type"], e["extra_info"].get("input_name")) for ne in answer["node_errors"].values() for e in ne["errors"]]
    assert status == 400 and errors and all(k == "value_not_in_list" and i in MODEL_FILE_INPUTS for k, i in errors), errors
