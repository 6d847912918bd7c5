// comfyui-magcache in ComfyUI's page.
//
// * After every sampling run the server sends a "magcache.report" event (nodes/report.py) addressed to the
//   cache node that patched the model; the node shows, per sampler run of the last prompt: a strip of the
//   steps (computed / skipped), k/N skipped, the block-pass speedup, the sampling time, and any notice.
//   What the node set up (strategy, preset, settings) comes with the node's own "executed" output (ui).
// * MagCache Calibrate draws the curve it saved (ratio per step with its std band, per cond; the TeaCache
//   fit where there is one) and says where the file is.
// * A saved calibration sends "magcache.calibrations": the preset lists of MagCache Apply / TeaCache Apply
//   in this page gain it at once (no R, no reload).
// * A number typed into one of the pack's inputs beyond its range is refused with a message instead of
//   being clamped to the maximum (the most aggressive setting).
//
// ComfyUI serves web/ at /extensions/<pack>/ (WEB_DIRECTORY in __init__.py); this file is js/magcache.js.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const REPORT_NODES = new Set(["MagCacheApply", "TeaCacheApply", "MagCacheCalibrate"]);
const PRESET_NODES = new Set(["MagCacheApply", "TeaCacheApply"]);
const WIDGET = "magcache_report";
const COLORS = { computed: "#7f8ea3", skipped: "#43b581", cond: "#4fc3f7", uncond: "#ffb74d" };
const CHART = { width: 300, height: 90 };
let presetLists = null;                        // the newest preset lists the server sent, by node type

// -- helpers --------------------------------------------------------------------------------------------
function el(tag, attrs = {}, ...children) {
    const svg = ["svg", "rect", "polyline", "polygon", "line", "circle"].includes(tag);
    const node = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag) : document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
        if (k === "text") node.textContent = v;
        else if (v !== undefined && v !== null) node.setAttribute(k, String(v));
    }
    for (const c of children) if (c) node.append(c);
    return node;
}

function fmt(x, digits = 3) {
    return Number.isFinite(x) ? Number(x.toPrecision(digits)).toString() : "-";
}

function nodeByExecutionId(id) {
    // "12" in the root graph, "12:5" for node 5 inside the subgraph of node 12.
    let graph = app.rootGraph ?? app.graph;
    let node = null;
    for (const part of String(id).split(":")) {
        node = graph?.getNodeById?.(Number(part)) ?? graph?.getNodeById?.(part);
        if (!node) return null;
        graph = node.subgraph;
    }
    return node;
}

function allNodes(graph = app.rootGraph ?? app.graph, out = []) {
    for (const node of graph?._nodes ?? graph?.nodes ?? []) {
        out.push(node);
        if (node.subgraph) allNodes(node.subgraph, out);
    }
    return out;
}

function toast(severity, summary, detail) {
    const t = app.extensionManager?.toast;
    if (t?.add) t.add({ severity, summary, detail, life: 6000 });
    else console.warn(`${summary}: ${detail}`);
}

// -- the panel on the node -----------------------------------------------------------------------------
function state(node) {
    node.magcache ??= { config: null, runs: [], promptId: null, stale: false, calibration: null, teacache: null };
    return node.magcache;
}

function panel(node) {
    let widget = node.widgets?.find((w) => w.name === WIDGET);
    if (widget) return widget;
    const root = el("div", { class: "magcache-report" });
    widget = node.addDOMWidget(WIDGET, WIDGET, root, {
        serialize: false,                      // neither in the saved workflow nor in the prompt
        hideOnZoom: false,
        getMinHeight: () => widget.magcacheHeight ?? 0,
        getMaxHeight: () => widget.magcacheHeight ?? 0,
    });
    widget.serialize = false;
    widget.magcacheHeight = 0;
    return widget;
}

function strip(run) {
    // One cell per step of the run: computed, skipped, or not reached.
    const n = run.strip.length;
    const svg = el("svg", { class: "magcache-strip", viewBox: `0 0 ${n} 1`, preserveAspectRatio: "none",
                            "data-steps": run.strip });
    for (let i = 0; i < n; i++) {
        const c = run.strip[i];
        if (c === "-") continue;
        svg.append(el("rect", { x: i + 0.1, y: 0, width: 0.8, height: 1,
                                fill: c === "C" ? COLORS.computed : COLORS.skipped }));
    }
    return svg;
}

function samplerName(run) {
    const id = run.sampler?.node;
    if (id == null) return "sampler";
    const node = nodeByExecutionId(id);
    return `${node?.title ?? "sampler"} #${id}`;
}

function runBlock(run) {
    const box = el("div", { class: "magcache-run" });
    const head = el("div", { class: "magcache-line" });
    head.append(el("b", { text: samplerName(run) }));
    if (run.seconds != null) head.append(el("span", { text: ` · ${run.seconds.toFixed(2)} s` }));
    box.append(head);
    if (run.computed == null) {                               // sampled uncached (its notice says why)
        box.append(el("div", { class: "magcache-line", text: run.method === "calibrate" ? "nothing recorded" : "not cached" }));
    } else if (run.method === "calibrate") {
        box.append(el("div", { class: "magcache-line", text: `recorded ${run.computed}/${run.run_steps} steps` }));
    } else {
        const where = run.run_steps !== run.total_steps
            ? ` (steps ${run.offset}-${run.offset + run.run_steps - 1} of ${run.total_steps})` : "";
        const seen = run.computed + run.skipped;
        box.append(strip(run), el("div", { class: "magcache-line magcache-count",
            text: `${run.skipped}/${seen} steps skipped${where} · ${run.speedup.toFixed(2)}x fewer block passes` }));
    }
    for (const n of run.notices ?? []) box.append(el("div", { class: "magcache-notice", text: `⚠ ${n}` }));
    return box;
}

function chart(series, { band = true, refLine = null, kind = "" } = {}) {
    // series: [{name, color, y: [...], lo: [...], hi: [...], dots: [...]}], x = index (step)
    const values = [];
    for (const s of series) {
        for (const arr of [s.y, band ? s.lo : null, band ? s.hi : null, s.dots]) if (arr) values.push(...arr.filter(Number.isFinite));
    }
    if (refLine != null) values.push(refLine);
    const n = Math.max(...series.map((s) => (s.y ?? s.dots).length));
    let lo = Math.min(...values), hi = Math.max(...values);
    if (!(hi > lo)) { hi = lo + 1; lo -= 1; }
    const pad = (hi - lo) * 0.08;
    lo -= pad; hi += pad;
    const { width: W, height: H } = CHART;
    const X = (i) => (n > 1 ? (i / (n - 1)) * W : W / 2);
    const Y = (v) => H - ((v - lo) / (hi - lo)) * H;
    const svg = el("svg", { class: "magcache-chart", viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none" });
    if (refLine != null) {
        svg.append(el("line", { x1: 0, x2: W, y1: Y(refLine), y2: Y(refLine), stroke: "#888", "stroke-dasharray": "3 3",
                                "vector-effect": "non-scaling-stroke", "stroke-width": 1 }));
    }
    for (const s of series) {
        if (band && s.lo && s.hi) {
            const upper = s.hi.map((v, i) => `${X(i)},${Y(v)}`);
            const lower = s.lo.map((v, i) => `${X(i)},${Y(v)}`).reverse();
            svg.append(el("polygon", { points: upper.concat(lower).join(" "), fill: s.color, "fill-opacity": 0.22,
                                       stroke: "none", class: "magcache-band" }));
        }
        if (s.y) {
            svg.append(el("polyline", { points: s.y.map((v, i) => `${X(i)},${Y(v)}`).join(" "), fill: "none",
                                        stroke: s.color, "stroke-width": 1.6, "vector-effect": "non-scaling-stroke",
                                        class: "magcache-curve", "data-cond": s.name }));
        }
        if (s.dots) {
            for (const [i, v] of s.dots.entries()) {
                if (Number.isFinite(v)) svg.append(el("circle", { cx: X(i), cy: Y(v), r: 1.6, fill: s.color, "fill-opacity": 0.8 }));
            }
        }
    }
    const frame = el("div", { class: `magcache-chart-frame ${kind}` });
    frame.append(el("span", { class: "magcache-axis magcache-top", text: fmt(hi) }),
                 el("span", { class: "magcache-axis magcache-bottom", text: fmt(lo) }), svg);
    return frame;
}

function legend(kinds) {
    const row = el("div", { class: "magcache-legend" });
    for (const k of kinds) {
        row.append(el("span", { class: "magcache-swatch", style: `background:${COLORS[k] ?? "#ccc"}` }), el("span", { text: ` ${k}  ` }));
    }
    return row;
}

function poly(coefficients, x) {
    return coefficients.reduce((y, c) => y * x + c, 0);
}

function calibrationBlock(cal, tea) {
    const box = el("div", { class: "magcache-calibration" });
    box.append(el("div", { class: "magcache-line", text: `Saved '${cal.name}' (${cal.model}, ${cal.steps} steps)` }));
    box.append(el("div", { class: "magcache-path", text: cal.path ?? "", title: cal.path ?? "" }));
    const kinds = Object.keys(cal.curves);
    const series = kinds.map((k) => {
        const r = cal.curves[k].ratio.slice(1), sd = (cal.curves[k].std ?? []).slice(1);
        return { name: k, color: COLORS[k] ?? "#ccc", y: r,
                 lo: sd.length ? r.map((v, i) => v - sd[i]) : null, hi: sd.length ? r.map((v, i) => v + sd[i]) : null };
    });
    box.append(el("div", { class: "magcache-caption", text: "magnitude ratio per step (1 to last), band ±std" }),
               chart(series, { refLine: 1, kind: "magcache-ratio" }), legend(kinds));
    if (tea?.coefficients) {
        const tk = Object.keys(tea.points ?? {});
        const teaSeries = tk.map((k) => {
            const p = tea.points[k];
            return { name: k, color: COLORS[k] ?? "#ccc", dots: p.l1.slice(1), y: p.input_l1.slice(1).map((x) => poly(tea.coefficients, x)) };
        });
        if (teaSeries.length) {
            box.append(el("div", { class: "magcache-caption",
                               text: `TeaCache fit (rmse ${fmt(tea.rmse)}): residual change per step, dots measured, line from the input` }),
                       chart(teaSeries, { band: false, kind: "magcache-teacache" }));
        }
    }
    return box;
}

function measure(root, width) {
    // The panel's height at this width: a hidden copy laid out off-screen (the widget itself may be hidden).
    const probe = root.cloneNode(true);
    Object.assign(probe.style, { position: "absolute", left: "-10000px", top: "0", width: `${width}px`,
                                 height: "auto", visibility: "hidden", display: "block" });
    document.body.append(probe);
    const height = probe.scrollHeight;
    probe.remove();
    return height;
}

function render(node) {
    const s = state(node);
    const widget = panel(node);
    const root = widget.element;
    root.replaceChildren();
    root.classList.toggle("magcache-stale", s.stale);
    if (s.config) {
        root.append(el("div", { class: "magcache-title", text: `${s.config.title}: ${s.config.label}` }),
                    el("div", { class: "magcache-settings", text: s.config.settings }));
        for (const n of s.config.notices ?? []) root.append(el("div", { class: "magcache-notice", text: `ⓘ ${n}` }));
    }
    if (s.stale && s.runs.length) root.append(el("div", { class: "magcache-dim", text: "previous prompt:" }));
    if (s.runs.some((run) => run.computed != null && run.method !== "calibrate")) {
        const key = el("div", { class: "magcache-legend" });
        key.append(el("span", { class: "magcache-swatch", style: `background:${COLORS.computed}` }), el("span", { text: " computed  " }),
                   el("span", { class: "magcache-swatch", style: `background:${COLORS.skipped}` }), el("span", { text: " skipped" }));
        root.append(key);
    }
    for (const run of s.runs) root.append(runBlock(run));
    if (s.calibration) root.append(calibrationBlock(s.calibration, s.teacache));
    const empty = !root.childElementCount;
    const width = Math.max(node.size[0], empty ? 0 : s.calibration ? 360 : 320);
    const margin = widget.margin ?? 10;                      // the front end insets the element by this on each side
    widget.magcacheHeight = empty ? 0 : measure(root, width - 2 * margin) + 2 * margin;
    root.style.display = empty ? "none" : "";
    node.setSize([width, node.computeSize([width, node.size[1]])[1]]);
    node.setDirtyCanvas?.(true, true);
    app.graph?.setDirtyCanvas?.(true, true);
}

// -- preset lists ---------------------------------------------------------------------------------------
function applyPresets(node) {
    const values = presetLists?.[node.comfyClass ?? node.type];
    const widget = node.widgets?.find((w) => w.name === "preset");
    if (!values || !widget?.options) return;
    widget.options.values = [...values];
}

function onCalibrations({ detail }) {
    if (!detail?.presets) return;
    presetLists = detail.presets;
    for (const node of allNodes()) if (PRESET_NODES.has(node.comfyClass ?? node.type)) applyPresets(node);
    app.graph?.setDirtyCanvas?.(true, true);
}

// -- typed values beyond an input's range -----------------------------------------------------------------
function guardRange(node, widget) {
    if (widget.type !== "number" || typeof widget.setValue !== "function") return;
    const setValue = widget.setValue;
    widget.setValue = function (value, options) {
        const { min, max } = this.options ?? {};
        const slack = Number.isFinite(max - min) ? (max - min) * 0.05 : 0;
        const moving = /move/.test(options?.e?.type ?? "");              // a drag clamps at the end, as usual
        if (!moving && typeof value === "number" && Number.isFinite(value) &&
            ((max != null && value > max + slack) || (min != null && value < min - slack))) {
            toast("warn", `${node.title}: ${this.name}`, `${value} is outside ${min} to ${max}; kept ${this.value}.`);
            return;
        }
        return setValue.call(this, value, options);
    };
}

// -- the extension --------------------------------------------------------------------------------------
function onReport({ detail }) {
    const node = detail?.node != null ? nodeByExecutionId(detail.node) : null;
    if (!node || (node.comfyClass ?? node.type) !== detail.node_type) return;    // not this graph's node
    const s = state(node);
    if (s.promptId !== detail.prompt_id || s.stale) {
        s.runs = [];
        s.promptId = detail.prompt_id;
        s.stale = false;
    }
    s.runs.push(detail.run);
    if (detail.run.calibration) {
        const cal = detail.run.calibration;
        s.calibration = cal;
        s.teacache = detail.run.teacache ?? null;
        toast("success", "MagCache calibration saved",
              `'${cal.name}' (${cal.steps} steps): choose 'calibration: ${cal.name}' in MagCache Apply` +
              (s.teacache ? " or TeaCache Apply" : "") + ".");
    }
    render(node);
}

function onExecutionStart() {
    for (const node of allNodes()) {
        if (node.magcache && REPORT_NODES.has(node.comfyClass ?? node.type)) {
            node.magcache.stale = true;
            render(node);
        }
    }
}

const STYLE = `
.magcache-report { font: 11px/15px var(--font-family, sans-serif); color: var(--input-text, #ddd);
  background: var(--comfy-input-bg, #222); border-radius: 6px; padding: 4px 6px; box-sizing: border-box;
  overflow: hidden; pointer-events: auto; }
.magcache-report.magcache-stale { opacity: 0.55; }
.magcache-line { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.magcache-title { font-weight: 600; overflow-wrap: anywhere; }
.magcache-settings, .magcache-dim, .magcache-caption { opacity: 0.75; overflow-wrap: anywhere; }
.magcache-path { opacity: 0.75; font-size: 10px; line-height: 14px; word-break: break-all; }
.magcache-notice { color: #f0c36d; overflow-wrap: anywhere; }
.magcache-count { white-space: normal; }
.magcache-run { margin-top: 3px; }
.magcache-strip { display: block; width: 100%; height: 10px; margin: 2px 0 1px; background: #0003; }
.magcache-calibration { margin-top: 3px; }
.magcache-chart-frame { position: relative; margin: 1px 0; }
.magcache-chart { display: block; width: 100%; height: ${CHART.height}px; background: #0003; }
.magcache-axis { position: absolute; left: 3px; font-size: 9px; line-height: 11px; opacity: 0.7; pointer-events: none; }
.magcache-top { top: 0; } .magcache-bottom { bottom: 0; }
.magcache-legend { font-size: 10px; }
.magcache-swatch { display: inline-block; width: 8px; height: 8px; border-radius: 2px; }
`;

app.registerExtension({
    name: "comfyui-magcache",
    async setup() {
        document.head.append(el("style", { text: STYLE, id: "magcache-style" }));
        api.addEventListener("magcache.report", onReport);
        api.addEventListener("magcache.calibrations", onCalibrations);
        api.addEventListener("execution_start", onExecutionStart);
    },
    async beforeRegisterNodeDef(nodeType, nodeData) {
        if (!REPORT_NODES.has(nodeData.name)) return;
        const onExecuted = nodeType.prototype.onExecuted;
        nodeType.prototype.onExecuted = function (output) {
            onExecuted?.apply(this, arguments);
            const config = output?.magcache?.[0];
            if (config) {
                state(this).config = config;
                render(this);
            }
        };
    },
    nodeCreated(node) {
        const type = node.comfyClass ?? node.type;
        if (!REPORT_NODES.has(type)) return;
        for (const w of node.widgets ?? []) guardRange(node, w);
        if (PRESET_NODES.has(type)) applyPresets(node);
    },
});
