"""Named calibrations on disk: one JSON file per name inside one folder, nothing outside it.

A name is 1-64 characters of letters, digits, ``_``, ``-``, ``.`` and spaces, starting with a
letter or digit; the resolved path must sit directly in the store's folder. Writes are atomic
(temp file + ``os.replace``); reads validate the whole file before anything uses it.
"""
from __future__ import annotations

import json
import math
import os
import re
import tempfile
import time

from .errors import MagCacheInputError
from .ratios import KIND_BY_NAME, RatioCurves, validate_ratios

FORMAT = "comfyui-magcache/calibration"
VERSION = 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_. -]{0,63}$")


def check_name(name, input_name: str = "calibration_name") -> str:
    if not isinstance(name, str):
        raise MagCacheInputError(input_name, f"expected text, got {type(name).__name__}")
    stripped = name.strip()
    if not _NAME.match(stripped) or ".." in stripped or stripped.endswith("."):
        raise MagCacheInputError(
            input_name, f"{name!r} is not a valid calibration name: use 1-64 letters, digits, '_', '-', '.' "
                        "or spaces, starting with a letter or digit (no '..', no path separators)")
    return stripped


class CalibrationStore:
    def __init__(self, folder: str):
        self.folder = os.path.abspath(folder)

    def path(self, name: str, input_name: str = "calibration_name") -> str:
        name = check_name(name, input_name)
        path = os.path.abspath(os.path.join(self.folder, name + ".json"))
        if os.path.dirname(path) != self.folder:
            raise MagCacheInputError(input_name, f"{name!r} resolves outside the calibration folder")
        return path

    def names(self) -> list[str]:
        if not os.path.isdir(self.folder):
            return []
        out = []
        for f in sorted(os.listdir(self.folder)):
            stem = f[:-5]
            if f.endswith(".json") and _NAME.match(stem) and ".." not in stem:
                out.append(stem)
        return out

    def save(self, name: str, model: str, steps: int, stats: dict, extra: dict | None = None) -> str:
        path = self.path(name)
        doc = {
            "format": FORMAT, "version": VERSION, "name": check_name(name), "model": model,
            "steps": steps, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "mag_ratios": {kind: s["ratio"] for kind, s in stats.items()},
            "stats": stats, **(extra or {}),
        }
        _validate(doc, path)
        os.makedirs(self.folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=self.folder)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f, indent=1)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return path

    def load(self, name: str, input_name: str = "calibration") -> dict:
        path = self.path(name, input_name)
        if not os.path.isfile(path):
            known = ", ".join(self.names()) or "none saved yet"
            raise MagCacheInputError(input_name, f"no calibration named {name!r} (saved: {known})")
        try:
            with open(path) as f:
                doc = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise MagCacheInputError(input_name, f"calibration file {path} is unreadable: {e}") from e
        _validate(doc, path, input_name)
        return doc

    def teacache_names(self) -> list[str]:
        """The saved calibrations that carry a fitted TeaCache polynomial."""
        out = []
        for name in self.names():
            try:
                with open(self.path(name)) as f:
                    if isinstance(json.load(f).get("teacache"), dict):
                        out.append(name)
            except (OSError, ValueError, AttributeError, MagCacheInputError):
                continue
        return out



def curves_of(doc: dict) -> RatioCurves:
    """The MagCache ratio curves of a loaded (validated) calibration document."""
    return RatioCurves(per_kind={KIND_BY_NAME[k]: tuple(v) for k, v in doc["mag_ratios"].items()})


def _validate(doc, path: str, input_name: str = "calibration") -> None:
    def bad(why):
        raise MagCacheInputError(input_name, f"calibration file {path} is invalid: {why}")
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        bad(f"not a {FORMAT} file")
    if doc.get("version") != VERSION:
        bad(f"version {doc.get('version')!r}, this pack reads version {VERSION}")
    if not isinstance(doc.get("model"), str):
        bad("missing 'model'")
    ratios = doc.get("mag_ratios")
    if not isinstance(ratios, dict) or not ratios or set(ratios) - set(KIND_BY_NAME):
        bad("'mag_ratios' must map 'cond'/'uncond' to lists")
    steps = doc.get("steps")
    tea = doc.get("teacache")
    if tea is not None:
        coefficients = tea.get("coefficients") if isinstance(tea, dict) else None
        if (not isinstance(coefficients, list) or not 2 <= len(coefficients) <= 12
                or not all(isinstance(c, (int, float)) and math.isfinite(c) for c in coefficients)):
            bad("'teacache.coefficients' must be a list of 2-12 finite numbers")
    fingerprint = doc.get("fingerprint")         # optional (files from before 'auto' have none)
    if fingerprint is not None and not (isinstance(fingerprint, dict)
                                        and all(isinstance(fingerprint.get(k), str) for k in ("weights", "schedule"))):
        bad("'fingerprint' must hold 'weights' and 'schedule' digests")
    for kind, curve in ratios.items():
        validate_ratios(curve, f"{input_name}.mag_ratios.{kind}")
        if len(curve) != steps:
            bad(f"'{kind}' has {len(curve)} ratios for {steps} steps")
