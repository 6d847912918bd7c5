"""The pack in ComfyUI's own page: Debian's chromium (/usr/bin/chromium) driven headless by playwright, a real
ComfyUI server with the pack and the shipped reference model (demo/models/), as a user would work it:

open the pack's reference graph from the template browser, calibrate (MagCache Calibrate in MagCache Apply's
place, as the graph's note asks) and Run; the Calibrate node draws the curve; without a reload the new
calibration is in MagCache Apply's preset list; put MagCache Apply back and Run: the node shows the run's
strip and skip count, as the server's log line says. Also: a value typed beyond an input's range is refused
with a message, the node's info panel finds its docs, and the pack causes no console error or failed request.

Screenshots go to $MAGCACHE_SCREENSHOTS (the README's come from ``MAGCACHE_SCREENSHOTS=docs/screenshots``),
else to the test's temp folder. Without chromium or playwright the module fails when CI=true and is skipped
with its reason otherwise. Never `playwright install`: this uses the system's chromium.
"""
from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

import pytest

from comfy_server import DEMO_NAME, PACK_NAME, ComfyServer, parse_runs

CHROMIUM = os.environ.get("MAGCACHE_CHROMIUM", "/usr/bin/chromium")
CALIBRATION = "shapes_demo"              # the name the reference graph's MagCache Apply asks for
TIMEOUT_MS = 180_000


def _browser_or_skip():
    problem = None
    if not os.access(CHROMIUM, os.X_OK):
        problem = f"no chromium at {CHROMIUM} (apt-get install chromium, or set MAGCACHE_CHROMIUM)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError as e:
            problem = f"playwright for Python is not installed ({e}); pip install -r tests/requirements.txt"
    if problem is None:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"browser test cannot run in CI: {problem}", pytrace=False)
    warnings.warn(f"BROWSER TEST SKIPPED: {problem}")
    pytest.skip(f"BROWSER TEST SKIPPED: {problem}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    _browser_or_skip()
    from comfyui_magcache_demo.reference import MODEL_PATH
    work = tmp_path_factory.mktemp("comfy-browser")
    with ComfyServer.start(work, models={"diffusion_models": [MODEL_PATH]}, timeout=180) as srv:
        status, _ = srv.request("/api/settings/Comfy.TutorialCompleted", True)   # no first-run template dialog
        assert status == 200
        yield srv


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    folder = Path(os.environ.get("MAGCACHE_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class Page:
    """The page, and everything it logged or failed to load."""

    def __init__(self, page, server):
        self.page, self.server = page, server
        self.console, self.failed, self.errors, self.loaded = [], [], [], []
        page.on("requestfinished", lambda r: self.loaded.append(r.url))
        page.on("console", lambda m: self.console.append((m.type, m.text, (m.location or {}).get("url", ""))))
        page.on("pageerror", lambda e: self.errors.append(f"{e}\n{getattr(e, 'stack', '')}"))
        page.on("response", lambda r: r.status >= 400 and self.failed.append((r.status, r.url)))
        # A request the page dropped itself (a closed dialog's images) is not a failure; any other is.
        page.on("requestfailed", lambda r: "ERR_ABORTED" not in (r.failure or "") and self.failed.append((r.failure, r.url)))

    def js(self, script, arg=None):
        return self.page.evaluate(script, arg)

    def wait(self, script, arg=None, timeout=TIMEOUT_MS):
        self.page.wait_for_function(script, arg=arg, timeout=timeout)

    def run(self):
        """Presses Run (the queue button) and waits until the prompt has finished."""
        before = self.js("() => app.magcacheTestPrompts ??= 0")
        self.page.get_by_role("button", name=re.compile(r"^\s*Run\s*$")).first.click()
        self.wait("n => (app.magcacheTestPrompts ?? 0) > n", before)

    def node_box(self, ids, pad=30):
        """A screenshot clip around nodes ``ids``, in page pixels."""
        return self.js("""([ids, pad]) => {
            const r = app.canvas.canvas.getBoundingClientRect(); let x0 = 1e9, y0 = 1e9, x1 = -1e9, y1 = -1e9;
            for (const id of ids) {
                const n = app.graph.getNodeById(id);
                const a = app.canvas.ds.convertOffsetToCanvas([n.pos[0], n.pos[1] - 30]);
                const b = app.canvas.ds.convertOffsetToCanvas([n.pos[0] + n.size[0], n.pos[1] + n.size[1]]);
                x0 = Math.min(x0, a[0]); y0 = Math.min(y0, a[1]); x1 = Math.max(x1, b[0]); y1 = Math.max(y1, b[1]);
            }
            const x = Math.max(r.left + x0 - pad, 0), y = Math.max(r.top + y0 - pad, 0);
            return {x, y, width: Math.min(r.left + x1 + pad, innerWidth) - x, height: Math.min(r.top + y1 + pad, innerHeight) - y};
        }""", [ids, pad])

    def frame(self, ids, margin=60, top=150):
        """Pans and zooms the canvas so that nodes ``ids`` fill the view below ``top`` px (the top bar)."""
        self.js("""([ids, margin, top]) => {
            let x0 = 1e9, y0 = 1e9, x1 = -1e9, y1 = -1e9;
            for (const id of ids) {
                const n = app.graph.getNodeById(id);
                x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - 30);
                x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]);
            }
            const r = app.canvas.canvas.getBoundingClientRect();
            const scale = Math.min(1.2, (r.width - 2 * margin) / (x1 - x0), (r.height - top - margin) / (y1 - y0));
            app.canvas.ds.scale = scale;
            app.canvas.ds.offset = [margin / scale - x0, top / scale - y0];
            app.canvas.setDirty(true, true);
        }""", [ids, margin, top])
        self.page.wait_for_timeout(500)


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright
    args = ["--no-sandbox"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            p = Page(browser.new_page(viewport={"width": 1500, "height": 900}), server)
            p.page.goto(server.url)
            p.wait("() => window.app?.graph && window.app.vueAppReady && app.extensions?.length")
            # Count finished prompts (for Page.run), as any extension could.
            p.js("""() => { for (const t of ["execution_success", "execution_error", "execution_interrupted"])
                               window.comfyAPI.api.api.addEventListener(t, () => app.magcacheTestPrompts = (app.magcacheTestPrompts ?? 0) + 1); }""")
            yield p
        finally:
            browser.close()


# -- the flow, in order ---------------------------------------------------------------------------------
def test_extension_loads(page):
    assert "comfyui-magcache" in page.js("() => app.extensions.map(e => e.name)")
    assert any(u.endswith(f"/extensions/{PACK_NAME}/js/magcache.js") for u in page.loaded), page.loaded


def _presets(page, node_id):
    return page.js("id => app.graph.getNodeById(id).widgets.find(w => w.name === 'preset').options.values", node_id)


def _ids(page):
    """{node type: id} of the graph in the page."""
    return page.js("() => Object.fromEntries(app.graph._nodes.map(n => [n.type, n.id]))")


def test_open_the_reference_graph_from_the_templates(page):
    page.js("() => app.extensionManager.command.execute('Comfy.BrowseTemplates')")
    page.page.get_by_text(DEMO_NAME, exact=True).first.click()      # the demo package's templates
    card = page.page.get_by_text(re.compile(r"reference model", re.I)).first
    card.click()
    page.wait("() => app.graph._nodes.some(n => n.type === 'MagCacheApply')")
    page.page.keyboard.press("Escape")
    # The graph's note sits where MagCache Apply's report grows: move it aside, as a user would.
    page.js("""() => { const ns = app.graph._nodes, bottom = Math.max(...ns.map(n => n.pos[1] + n.size[1]));
                       for (const n of ns) if (n.type === "Note") n.pos = [0, bottom + 400]; }""")
    ids = _ids(page)
    assert {"UNETLoader", "MagCacheApply", "KSampler", "SaveImage"} <= set(ids)
    # It runs as it is (its curve comes from a MagCache Ratios node); no calibration of ours exists yet.
    assert "MagCacheRatios" in ids
    assert "calibration: " + CALIBRATION not in _presets(page, ids["MagCacheApply"])


def test_calibrate_draws_the_curve_and_says_where_it_saved(page, shots):
    """As the graph's note says: MagCache Calibrate in MagCache Apply's place, then Run."""
    ids = _ids(page)
    cal = page.js("""([ids, name]) => {
        const apply = app.graph.getNodeById(ids.MagCacheApply), loader = app.graph.getNodeById(ids.UNETLoader);
        const sampler = app.graph.getNodeById(ids.KSampler);
        const cal = LiteGraph.createNode("MagCacheCalibrate");
        cal.pos = [apply.pos[0], apply.pos[1] + apply.size[1] + 60];
        app.graph.add(cal);
        cal.widgets.find(w => w.name === "calibration_name").value = name;
        loader.connect(0, cal, 0);
        cal.connect(0, sampler, sampler.findInputSlot("model"));
        return cal.id;
    }""", [ids, CALIBRATION])
    page.frame([ids["UNETLoader"], ids["MagCacheApply"], cal, ids["KSampler"]])
    log_start = page.server.log_size()
    page.run()
    page.wait("id => app.graph.getNodeById(id).magcache?.calibration", cal)
    page.frame([ids["UNETLoader"], cal, ids["KSampler"]])
    drawn = page.js("""id => {
        const el = app.graph.getNodeById(id).widgets.find(w => w.name === "magcache_report").element;
        const r = el.getBoundingClientRect();
        return {text: el.innerText, visible: el.isConnected && getComputedStyle(el).display !== "none" && r.height > 100,
                curves: [...el.querySelectorAll(".magcache-ratio .magcache-curve")].map(c => [c.dataset.cond, c.getAttribute("points").split(" ").length]),
                bands: el.querySelectorAll(".magcache-ratio .magcache-band").length,
                fit: [...el.querySelectorAll(".magcache-teacache .magcache-curve")].map(c => c.dataset.cond)};
    }""", cal)
    path = page.server.base / "user" / "magcache" / "calibrations" / f"{CALIBRATION}.json"
    assert path.is_file()
    doc = json.loads(path.read_text())
    assert drawn["visible"], drawn
    assert f"Saved '{CALIBRATION}'" in drawn["text"] and str(path) in drawn["text"].replace("\n", ""), drawn["text"]
    steps = doc["steps"]
    assert sorted(drawn["curves"]) == sorted([k, steps - 1] for k in doc["mag_ratios"]), drawn  # steps 1.. per cond
    assert drawn["bands"] == len(doc["mag_ratios"])                                             # the std band
    assert sorted(drawn["fit"]) == sorted(doc["mag_ratios"]) and "TeaCache fit" in drawn["text"]  # and the fit
    (run,) = parse_runs(page.server.log_text(log_start))
    assert run["method"] == "calibrate" and run["computed"] == steps
    page.page.screenshot(path=str(shots / "magcache_calibrate.png"),
                         clip=page.node_box([ids["UNETLoader"], cal, ids["KSampler"]]))


def test_new_calibration_is_selectable_without_reload(page):
    """The page was not reloaded, nor R pressed: the open MagCache Apply and a new one both offer it."""
    ids = _ids(page)
    entry = "calibration: " + CALIBRATION
    assert entry in _presets(page, ids["MagCacheApply"])
    fresh = page.js("""() => { const n = LiteGraph.createNode("TeaCacheApply"); app.graph.add(n);
                               const v = [...n.widgets.find(w => w.name === "preset").options.values]; app.graph.remove(n); return v; }""")
    assert entry in fresh                                          # the fit is there too, for TeaCache Apply


def test_apply_shows_the_runs_strip_and_skip_count(page, shots):
    ids = _ids(page)
    page.js("""([ids, name]) => {             // MagCache Apply back into the sampler's model input, Calibrate out
        const sampler = app.graph.getNodeById(ids.KSampler), apply = app.graph.getNodeById(ids.MagCacheApply);
        apply.connect(0, sampler, sampler.findInputSlot("model"));
        app.graph.remove(app.graph.getNodeById(ids.MagCacheCalibrate));
        apply.disconnectInput(apply.findInputSlot("ratios"));      // the new calibration instead of typed ratios
        apply.widgets.find(w => w.name === "preset").value = "calibration: " + name;
    }""", [ids, CALIBRATION])
    page.frame([ids["UNETLoader"], ids["MagCacheApply"], ids["KSampler"]])
    log_start = page.server.log_size()
    page.run()
    page.wait("id => app.graph.getNodeById(id).magcache?.runs?.length", ids["MagCacheApply"])
    page.frame([ids["UNETLoader"], ids["MagCacheApply"], ids["KSampler"]])
    shown = page.js("""id => {
        const el = app.graph.getNodeById(id).widgets.find(w => w.name === "magcache_report").element;
        const r = el.getBoundingClientRect();
        return {text: el.innerText, visible: el.isConnected && getComputedStyle(el).display !== "none" && r.height > 40,
                strips: [...el.querySelectorAll(".magcache-strip")].map(s => s.dataset.steps),
                cells: [...el.querySelectorAll(".magcache-strip rect")].length};
    }""", ids["MagCacheApply"])
    (run,) = parse_runs(page.server.log_text(log_start))
    assert run["method"] == "magcache" and 0 < run["skipped"] < run["total"], run
    assert shown["visible"], shown
    assert shown["strips"] == ["".join("C" if s in run["steps"] else "S" for s in range(run["total"]))], (shown, run)
    assert shown["cells"] == run["total"]
    assert f"{run['skipped']}/{run['total']} steps skipped" in shown["text"], shown["text"]
    assert f"{run['total'] / run['computed']:.2f}x fewer block passes" in shown["text"]
    assert f"calibration '{CALIBRATION}'" in shown["text"] and "threshold 0.04, retention 0.1, K 2" in shown["text"]
    page.page.screenshot(path=str(shots / "magcache_apply.png"),
                         clip=page.node_box([ids["UNETLoader"], ids["MagCacheApply"], ids["KSampler"]]))


def test_two_samplers_each_get_their_line(page, shots):
    """A second KSampler on the same patched model (another seed), and a new seed for the first: the prompt's
    report replaces the last one and has a line per sampler."""
    ids = _ids(page)
    second = page.js("""ids => {
        const g = app.graph, ks = g.getNodeById(ids.KSampler), dec = g.getNodeById(ids.MagCacheShapesDecode);
        const copy = (node) => {                                // a new node with the same widget values
            const n = LiteGraph.createNode(node.type);
            g.add(n);
            for (const w of n.widgets ?? []) w.value = node.widgets.find(v => v.name === w.name).value;
            return n;
        };
        const ks2 = copy(ks), dec2 = copy(dec), save2 = copy(g.getNodeById(ids.SaveImage));
        ks2.pos = [ks.pos[0], ks.pos[1] + ks.size[1] + 60]; dec2.pos = [dec.pos[0], ks2.pos[1]];
        save2.pos = [dec.pos[0] + dec.size[0] + 40, ks2.pos[1]];
        ks2.widgets.find(w => w.name === "seed").value = 7;
        ks.widgets.find(w => w.name === "seed").value += 1;   // else ComfyUI reuses its cached output: no run
        for (const [i, input] of ks.inputs.entries()) {
            if (input.link == null) continue;                  // a widget's input socket
            const link = g.links.get?.(input.link) ?? g.links[input.link];
            g.getNodeById(link.origin_id).connect(link.origin_slot, ks2, i);
        }
        ks2.connect(0, dec2, 0); dec2.connect(0, save2, 0);
        return ks2.id;
    }""", ids)
    log_start = page.server.log_size()
    page.run()
    page.wait("id => app.graph.getNodeById(id).magcache?.runs?.length === 2", ids["MagCacheApply"])
    runs = parse_runs(page.server.log_text(log_start))
    shown = page.js("""id => {
        const el = app.graph.getNodeById(id).widgets.find(w => w.name === "magcache_report").element;
        return {strips: [...el.querySelectorAll(".magcache-strip")].map(s => s.dataset.steps),
                heads: [...el.querySelectorAll(".magcache-run > .magcache-line:first-child")].map(h => h.innerText)};
    }""", ids["MagCacheApply"])
    assert len(runs) == 2 and len(shown["strips"]) == 2, (runs, shown)
    assert sorted(shown["strips"]) == sorted("".join("C" if i in r["steps"] else "S" for i in range(r["total"])) for r in runs)
    assert str(second).isdigit() and str(second) != str(ids["KSampler"])
    assert sorted(h.split(" · ")[0] for h in shown["heads"]) == sorted([f"KSampler #{ids['KSampler']}", f"KSampler #{second}"])
    page.frame([ids["MagCacheApply"], ids["KSampler"], second])
    page.page.screenshot(path=str(shots / "magcache_two_samplers.png"),
                         clip=page.node_box([ids["MagCacheApply"], ids["KSampler"], second]))


def test_typed_value_beyond_the_range_is_refused(page):
    """Typing 99 into threshold keeps the value and says why (the front end would clamp it to the maximum)."""
    ids = _ids(page)
    node = ids["MagCacheApply"]
    where = page.js("""id => {
        const n = app.graph.getNodeById(id), w = n.widgets.find(w => w.name === "threshold");
        const r = app.canvas.canvas.getBoundingClientRect();
        const p = app.canvas.ds.convertOffsetToCanvas([n.pos[0] + n.size[0] / 2, n.pos[1] + w.last_y + 10]);
        return {x: r.left + p[0], y: r.top + p[1], value: w.value, max: w.options.max};
    }""", node)
    page.page.mouse.click(where["x"], where["y"])
    prompt = page.page.locator(".graphdialog input, .litegraph .dialog input").first
    prompt.fill("99")
    prompt.press("Enter")
    toast = page.page.locator(".p-toast-message", has_text="threshold")
    toast.first.wait_for(timeout=10_000)
    assert "99 is outside" in toast.first.inner_text()
    assert page.js("id => app.graph.getNodeById(id).widgets.find(w => w.name === 'threshold').value", node) == where["value"]
    assert where["max"] == 0.5


def test_node_info_panel_shows_the_docs(page):
    ids = _ids(page)
    page.frame([ids["MagCacheApply"]], top=300)          # room above the node for the selection toolbox
    page.js("id => { app.canvas.deselectAll?.(); app.canvas.selectNode(app.graph.getNodeById(id)); app.canvas.setDirty(true, true); }",
            ids["MagCacheApply"])
    page.page.locator("[data-testid='info-button']").first.click()
    page.page.get_by_text("Accumulated error allowed before the blocks must run again", exact=False).first.wait_for(timeout=20_000)


def test_the_pack_causes_no_console_error_or_failed_request(page):
    """Nothing the pack serves or asks for fails (docs, templates and their thumbnails, our routes, our script);
    no console error comes from our script. (Errors of an offline ComfyUI itself, such as the front end's
    blocked look-ups at api.comfy.org or a missing user.css, are not the pack's.)"""
    ours = re.compile(r"magcache", re.I)
    failed = [(s, u) for s, u in page.failed if ours.search(u) and "api.comfy.org" not in u]
    assert not failed, failed
    errors = [(t, text, url) for t, text, url in page.console
              if t in ("error", "warning") and (f"/extensions/{PACK_NAME}/" in url or (ours.search(text) and "api.comfy.org" not in text))]
    assert not errors, errors
    assert not [e for e in page.errors if ours.search(e)], page.errors
