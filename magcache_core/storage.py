"""Named calibrations on disk: one JSON file per name inside one folder, nothing outside it.

A name is 1-64 characters of letters, digits, ``_``, ``-``, ``.`` and spaces, starting with a
letter or digit, not ending in a space or a dot, without ``..``; the file is ``<folder>/<name>.json``.
Writes are atomic (temp file + ``os.replace``).

Reading is by name only, and only what a calibration can be: a regular file directly inside the
folder (a symbolic link counts only if it resolves to such a file; links out of the folder, devices,
FIFOs and sockets are refused before anything opens them), at most ``MAX_FILE_BYTES`` long, JSON
nested at most ``MAX_JSON_DEPTH`` levels, every key the pack reads checked. Errors name the file and
the key. Listing (the node dropdowns, on every ``/object_info``) looks at directory entries only;
which files carry a TeaCache fit is parsed once per file version, keyed by (size, mtime, inode).
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import stat
import tempfile
import threading
import time

from .errors import MagCacheInputError
from .ratios import KIND_BY_NAME, RatioCurves, validate_ratios
from .teacache import fit_coefficients

log = logging.getLogger("comfyui-magcache")

FORMAT = "comfyui-magcache/calibration"
VERSION = 1
MAX_FILE_BYTES = 4 * 1024 * 1024     # a 1000-step calibration with all its statistics is ~0.3 MB
MAX_JSON_DEPTH = 32                  # a calibration is 4 levels deep; a ratios input 2
MODEL_ALIASES = {"wan2.1": "wan"}    # strategy names of calibrations saved by earlier versions
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_. -]{0,63}")
_SUFFIX = ".json"


def valid_name(name) -> bool:
    """Whether ``name`` is a calibration name exactly as given (what listing and loading both accept)."""
    return (isinstance(name, str) and _NAME.fullmatch(name) is not None and ".." not in name
            and not name.endswith((".", " ")))


def check_name(name, input_name: str = "calibration_name") -> str:
    """``name`` without surrounding spaces, or an error naming ``input_name`` if it is no valid name."""
    if not isinstance(name, str):
        raise MagCacheInputError(input_name, f"expected text, got {type(name).__name__}")
    stripped = name.strip()
    if not valid_name(stripped):
        raise MagCacheInputError(
            input_name, f"{name!r} is not a valid calibration name: use 1-64 letters, digits, '_', '-', '.' "
                        "or spaces, starting with a letter or digit and not ending in '.' (no '..', no path "
                        "separators)")
    return stripped


def parse_json(text: str, input_name: str, what: str, max_chars: int = MAX_FILE_BYTES):
    """``json.loads(text)`` with bounds: at most ``max_chars`` characters, nested at most
    ``MAX_JSON_DEPTH`` levels. Deeper input is a MagCacheInputError naming ``input_name`` and ``what``
    (never a RecursionError, here or in whatever walks the value later); malformed JSON raises
    ``json.JSONDecodeError`` as usual."""
    if len(text) > max_chars:
        raise MagCacheInputError(input_name, f"{what} is {len(text)} characters long; at most {max_chars} are read")
    too_deep = f"{what} is nested more than {MAX_JSON_DEPTH} levels deep ([ ] / {{ }} inside each other)"
    try:
        value = json.loads(text)
    except RecursionError:                      # the C decoder's own guard, far deeper than ours
        raise MagCacheInputError(input_name, too_deep) from None
    level = [value]
    for _ in range(MAX_JSON_DEPTH):             # breadth-first, one list per level: no recursion
        level = [v for c in level if isinstance(c, (list, dict))
                 for v in (c.values() if isinstance(c, dict) else c)]
        if not level:
            return value
    if any(isinstance(v, (list, dict)) for v in level):
        raise MagCacheInputError(input_name, too_deep)
    return value


def _too_big(path: str, size) -> str:
    return (f"calibration file {path} is {size} bytes; calibration files are at most "
            f"{MAX_FILE_BYTES // (1024 * 1024)} MiB ({MAX_FILE_BYTES} bytes), so it is not read")


class _Refused(Exception):
    """A directory entry that is no calibration file (why in the message); listing skips it."""


class CalibrationStore:
    # (folder, name) -> ((size, mtime_ns, inode), carries a TeaCache fit): parsed once per file version
    _teacache_seen: dict[tuple[str, str], tuple[tuple[int, int, int], bool]] = {}
    _teacache_lock = threading.Lock()

    def __init__(self, folder: str):
        self.folder = os.path.abspath(folder)

    def path(self, name: str, input_name: str = "calibration_name") -> str:
        name = check_name(name, input_name)
        path = os.path.abspath(os.path.join(self.folder, name + _SUFFIX))
        if os.path.dirname(path) != self.folder:
            raise MagCacheInputError(input_name, f"{name!r} resolves outside the calibration folder")
        return path

    # -- what is in the folder ---------------------------------------------------------------------
    def _regular(self, path: str) -> tuple[str, os.stat_result]:
        """(file to open, its stat) for the entry ``path``: a regular file directly inside the folder,
        or a link that resolves to one. Raises _Refused, or OSError (e.g. FileNotFoundError)."""
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            target = os.path.realpath(path)
            if os.path.dirname(target) != os.path.realpath(self.folder):
                raise _Refused(f"is a link to {target}, outside the calibration folder {self.folder}; "
                               "only files directly inside it are read")
            path, st = target, os.stat(target)
        if not stat.S_ISREG(st.st_mode):
            raise _Refused("is not a regular file (a folder, device, FIFO or socket); calibrations are plain "
                           ".json files")
        return path, st

    def _scan(self) -> dict[str, os.stat_result]:
        """name -> stat of every calibration file in the folder, by directory entries only (no file is opened)."""
        found = {}
        try:
            entries = list(os.scandir(self.folder))
        except FileNotFoundError:
            return found
        except OSError as e:
            log.warning("MagCache: cannot list the calibration folder %s: %s", self.folder, e)
            return found
        for entry in entries:
            name = entry.name[:-len(_SUFFIX)]
            if not entry.name.endswith(_SUFFIX) or not valid_name(name):
                continue
            try:
                found[name] = self._regular(entry.path)[1]
            except (_Refused, OSError):
                continue
        return dict(sorted(found.items()))

    def names(self) -> list[str]:
        """The names of the calibration files in the folder; each is accepted by ``load`` (if valid inside)."""
        return list(self._scan())

    def teacache_names(self) -> list[str]:
        """The saved calibrations that are valid and carry a fitted TeaCache polynomial. Each file is
        parsed once per version (size, mtime, inode); files over the size limit are never read."""
        scanned = self._scan()
        with CalibrationStore._teacache_lock:
            seen = CalibrationStore._teacache_seen
            for key in [k for k in seen if k[0] == self.folder and k[1] not in scanned]:
                del seen[key]
            out = []
            for name, st in scanned.items():
                version = (st.st_size, st.st_mtime_ns, st.st_ino)
                known = seen.get((self.folder, name))
                if known is None or known[0] != version:
                    try:
                        has_fit = "teacache" in self.load(name)
                    except (MagCacheInputError, OSError):
                        has_fit = False
                    known = seen[(self.folder, name)] = (version, has_fit)
                if known[1]:
                    out.append(name)
        return out

    # -- reading and writing -----------------------------------------------------------------------
    def _read(self, name: str, input_name: str) -> tuple[str, str]:
        """(path, text) of calibration ``name``, read only if it is a regular file of bounded size."""
        path = self.path(name, input_name)
        try:
            target, st = self._regular(path)
        except FileNotFoundError:
            known = ", ".join(self.names()) or "none saved yet"
            raise MagCacheInputError(input_name, f"no calibration named {name!r} (saved: {known})") from None
        except _Refused as e:
            raise MagCacheInputError(input_name, f"calibration file {path} {e}") from None
        except OSError as e:
            raise MagCacheInputError(input_name, f"calibration file {path} is unreadable: {e}") from e
        if st.st_size > MAX_FILE_BYTES:
            raise MagCacheInputError(input_name, _too_big(path, st.st_size))
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
        try:
            fd = os.open(target, flags)
            with os.fdopen(fd, "rb") as f:
                st = os.fstat(f.fileno())           # what was opened, not what was looked at
                if not stat.S_ISREG(st.st_mode):
                    raise MagCacheInputError(input_name, f"calibration file {path} is not a regular file")
                data = f.read(MAX_FILE_BYTES + 1)
        except OSError as e:
            raise MagCacheInputError(input_name, f"calibration file {path} is unreadable: {e}") from e
        if len(data) > MAX_FILE_BYTES:
            raise MagCacheInputError(input_name, _too_big(path, f"more than {MAX_FILE_BYTES}"))
        try:
            return path, data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise MagCacheInputError(input_name, f"calibration file {path} is not UTF-8 text: {e}") from None

    def load(self, name: str, input_name: str = "calibration") -> dict:
        path, text = self._read(name, input_name)
        try:
            doc = parse_json(text, input_name, f"calibration file {path}")
        except json.JSONDecodeError as e:
            raise MagCacheInputError(input_name, f"calibration file {path} is unreadable: {e}") from None
        _validate(doc, path, input_name)
        return doc

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
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=_SUFFIX, dir=self.folder)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f, indent=1)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return path


def save_calibration(store: CalibrationStore, name: str, model: str, residual: str, num_steps: int, stats: dict,
                     fit_teacache: bool, fingerprint: dict | None = None) -> tuple[str, dict, str]:
    """Write a finished calibration run (``CalibrationRecorder.result()`` of a run of ``num_steps`` steps) as
    ``name``: checks that every cond recorded every step, fits the TeaCache polynomial where the model has
    TeaCache's input (``fit_teacache``). ``model`` is the strategy's name (what loading checks), ``residual``
    what the residual is. Returns (path, the keys written beside the curves, a few words on the fit for a log
    line). Raises RuntimeError when a step is missing. Every front end (the nodes, the diffusers API) saves here."""
    for kind, s in stats.items():
        if len(s["ratio"]) != num_steps:
            raise RuntimeError(f"{kind} was computed on {len(s['ratio'])} of {num_steps} steps: model calls "
                               "were skipped (another cache in front of the calibration?)")
    extra, tea = {"residual": residual}, ""
    if fit_teacache:
        try:
            extra["teacache"] = fit_coefficients(stats)
            tea = f"; TeaCache polynomial fitted, rmse {extra['teacache']['rmse']:.4g}"
        except ValueError as e:
            tea = f"; no TeaCache fit ({e})"
            extra["teacache_error"] = str(e)
    if fingerprint is not None:
        extra["fingerprint"] = fingerprint
    return store.save(name, model, num_steps, stats, extra), extra, tea


def made_on(doc: dict) -> str:
    """The strategy name of the model a loaded calibration was made on (earlier versions' names mapped)."""
    return MODEL_ALIASES.get(doc["model"], doc["model"])


def curves_of(doc: dict) -> RatioCurves:
    """The MagCache ratio curves of a loaded (validated) calibration document."""
    return RatioCurves(per_kind={KIND_BY_NAME[k]: tuple(v) for k, v in doc["mag_ratios"].items()})


def _validate(doc, path: str, input_name: str = "calibration") -> None:
    """Every key the pack reads, checked; errors name the file and the key."""
    def bad(why):
        raise MagCacheInputError(input_name, f"calibration file {path} is invalid: {why}")

    def got(key):
        return f"got {doc[key]!r:.80}" if key in doc else "it is missing"
    if not isinstance(doc, dict):
        bad(f"not a {FORMAT} file (expected a JSON object, got a JSON {type(doc).__name__})")
    if doc.get("format") != FORMAT:
        bad(f"'format' must be {FORMAT!r}, {got('format')}")
    if type(doc.get("version")) is not int or doc["version"] != VERSION:
        bad(f"'version' must be {VERSION} (the version this pack reads), {got('version')}")
    for key in ("name", "model"):
        if not isinstance(doc.get(key), str):
            bad(f"'{key}' must be text, {got(key)}")
    steps = doc.get("steps")
    if type(steps) is not int or steps < 1:
        bad(f"'steps' must be a whole number >= 1 (the calibration run's step count), {got('steps')}")
    ratios = doc.get("mag_ratios")
    if not isinstance(ratios, dict) or not ratios or set(ratios) - set(KIND_BY_NAME):
        bad(f"'mag_ratios' must map 'cond' and/or 'uncond' (and 'cond2'... for a third cond) to lists of ratios, "
            f"{got('mag_ratios')}")
    for kind, curve in ratios.items():
        try:
            validate_ratios(curve, f"'mag_ratios.{kind}'")
        except MagCacheInputError as e:
            bad(str(e))
        if len(curve) != steps:
            bad(f"'mag_ratios.{kind}' has {len(curve)} ratios for {steps} steps ('steps')")
    if "teacache" in doc:
        tea = doc["teacache"]
        coefficients = tea.get("coefficients") if isinstance(tea, dict) else None
        if (not isinstance(coefficients, list) or not 2 <= len(coefficients) <= 12
                or not all(isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c)
                           for c in coefficients)):
            bad("'teacache.coefficients' must be a list of 2-12 finite numbers")
    fingerprint = doc.get("fingerprint")         # optional (files from before 'auto' have none)
    if fingerprint is not None and not (isinstance(fingerprint, dict)
                                        and all(isinstance(fingerprint.get(k), str) for k in ("weights", "schedule"))):
        bad("'fingerprint' must hold 'weights' and 'schedule' digests")
