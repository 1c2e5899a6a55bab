"""SOLVER.AMP / SOLVER.CHANNELS_LAST `auto`: the precision and memory format this machine trains fastest in.

A precision written into a YAML file is a property of one machine: bf16 autocast is native on
Ampere+ GPUs and on CPUs with AVX512-BF16/AMX, emulated (and slow) elsewhere. So `auto` decides
at start-up, by capability where that is decisive (CUDA compute capability; a CPU without native
bf16 never gets bf16) and otherwise by a short trial of the real training step: a few interleaved
steps per candidate, within TRIAL_BUDGET_S per candidate. The fastest candidate wins; one within TIE_MARGIN of
it that comes earlier in the order fp32 < bf16/fp16, NCHW < channels_last wins instead (the
simpler setting, and no flip-flopping on noise). Trial results are cached per device, model
pair, method, batch and input size, so later runs skip the trial; a resumed run reuses its own
choice. `resolve` holds the decision and takes the capability, the trial and the cache as
arguments, so that it can be tested with faked ones.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from yacs.config import CfgNode

from kdlab.engine.step_utils import rng_state, set_rng_state

log = logging.getLogger("kdlab")

AUTO = "auto"
AUTO_KEYS = ("AMP", "CHANNELS_LAST")
TRIAL_BUDGET_S = 3.0  # per candidate, warm-up included; $KDLAB_PRECISION_TRIAL_S overrides, 0 = no trial
BUDGET_ENV = "KDLAB_PRECISION_TRIAL_S"
TIE_MARGIN = 0.03
PROBE_IMAGES = 8  # the trial starts on this many images of the batch, then grows if the budget allows
MIN_ROUNDS, MAX_ROUNDS = 2, 5
CACHE_ENV = "KDLAB_CACHE_DIR"
CACHE_FILE = "precision.json"
CACHE_VERSION = 1
_SHORT = {None: "fp32", "bfloat16": "bf16", "float16": "fp16"}


@dataclass(frozen=True)
class Choice:
    """A concrete setting: autocast dtype (None: fp32) and memory format."""

    amp: Optional[str]
    channels_last: bool

    @property
    def label(self) -> str:
        return _SHORT[self.amp] + ("+channels_last" if self.channels_last else "")


@dataclass(frozen=True)
class Capability:
    """What decides by itself: the device kind and name, native CPU bf16, CUDA compute capability."""

    device_type: str
    name: str
    native_bf16: bool = False
    cuda_capability: Optional[tuple[int, int]] = None


@dataclass(frozen=True)
class Request:
    """SOLVER.AMP / CHANNELS_LAST as configured: True, False or "auto"; AMP_DTYPE for AMP True."""

    amp: Any
    channels_last: Any
    amp_dtype: str = "bfloat16"

    @classmethod
    def from_cfg(cls, cfg: CfgNode) -> Request:
        return cls(cfg.SOLVER.AMP, cfg.SOLVER.CHANNELS_LAST, cfg.SOLVER.AMP_DTYPE)

    @property
    def auto_keys(self) -> tuple[str, ...]:
        return tuple(f"SOLVER.{k}" for k, v in zip(AUTO_KEYS, (self.amp, self.channels_last)) if v == AUTO)

    def fixed(self, saved: Optional[Choice] = None) -> Choice:
        """The configured values; `auto` keys from saved (a resumed run's choice)."""
        amp = (saved.amp if saved else None) if self.amp == AUTO else (self.amp_dtype if self.amp else None)
        cl = (saved.channels_last if saved else False) if self.channels_last == AUTO else bool(self.channels_last)
        return Choice(amp, cl)


@dataclass
class Trial:
    """Median seconds per step of each candidate, or None with the reason the trial could not run."""

    timings_s: Optional[dict[Choice, float]]
    note: str


@dataclass
class Decision:
    choice: Choice
    decided_by: str  # config | capability | trial | cache | resume
    reason: str
    timings_s: dict[str, float] = field(default_factory=dict)
    auto_keys: tuple[str, ...] = ()

    def record(self) -> dict:
        """The `precision` entry of metrics.json and of the checkpoint."""
        return {"amp": self.choice.amp or False, "channels_last": self.choice.channels_last,
                "decided_by": self.decided_by, "timings_s": dict(self.timings_s),
                "auto_keys": list(self.auto_keys), "reason": self.reason}

    def describe(self) -> str:
        return f"{self.choice.label} (decided by {self.decided_by}: {self.reason})"

    def header(self) -> str:
        """The comment line config.yaml carries about the keys `auto` chose."""
        if not self.auto_keys:
            return "# SOLVER.AMP and SOLVER.CHANNELS_LAST as configured"
        return f"# {', '.join(self.auto_keys)}: auto in the config; here {self.describe()}"


# ---------------------------------------------------------------- capability
def _cpuinfo() -> tuple[str, set]:
    """(model name, feature flags) from /proc/cpuinfo; ("", {}) where there is none."""
    name, flags = "", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key == "model name" and not name:
                    name = value.strip()
                elif key in ("flags", "features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return name, flags


def detect_capability(device: torch.device) -> Capability:
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return Capability("cuda", torch.cuda.get_device_name(index),
                          cuda_capability=tuple(torch.cuda.get_device_capability(index)))
    name, flags = _cpuinfo()
    # AVX512_BF16 / AMX on x86, the bf16 extension on Arm; elsewhere bf16 autocast is emulated
    native = bool(flags & {"avx512_bf16", "amx_bf16"}) or (
        platform.machine().lower() in ("aarch64", "arm64") and "bf16" in flags)
    return Capability(device.type, name or platform.processor() or platform.machine(), native_bf16=native)


def capability_dtypes(cap: Capability) -> list[Optional[str]]:
    """Autocast dtypes worth trying here, simplest first."""
    if cap.device_type == "cuda":
        cc = cap.cuda_capability or (0, 0)
        return ["bfloat16"] if cc >= (8, 0) else ["float16"] if cc >= (7, 0) else [None]
    return [None, "bfloat16"] if cap.native_bf16 else [None]


def capability_reason(cap: Capability) -> str:
    if cap.device_type == "cuda":
        cc = cap.cuda_capability or (0, 0)
        kind = "bf16" if cc >= (8, 0) else "fp16 + GradScaler" if cc >= (7, 0) else "fp32 (no fast fp16/bf16)"
        return f"{cap.name} has compute capability {cc[0]}.{cc[1]}: {kind}"
    has = "has" if cap.native_bf16 else "has no"
    return f"CPU {cap.name} {has} native bf16 (AVX512_BF16/AMX)"


def candidates(cap: Capability, request: Request) -> list[Choice]:
    """The settings auto chooses among, simplest first; keys set True/False stay as set."""
    dtypes = capability_dtypes(cap) if request.amp == AUTO else [request.fixed().amp]
    formats = [False, True] if request.channels_last == AUTO else [bool(request.channels_last)]
    return [Choice(d, cl) for d in dtypes for cl in formats]


def every_choice(cap: Capability) -> list[Choice]:
    """Every setting this device can run, also those auto rules out (benchmarks show why)."""
    cc = cap.cuda_capability or (0, 0)
    dtypes = [None, "bfloat16"] if cap.device_type != "cuda" or cc >= (8, 0) else [None]
    dtypes += ["float16"] if cap.device_type == "cuda" else []
    return [Choice(d, cl) for d in dtypes for cl in (False, True)]


def fallback(cands: list[Choice], cap: Capability) -> Choice:
    """Without a trial: on CUDA the reduced precision its compute capability runs fast, in channels_last
    (tensor cores prefer NHWC); on a CPU the simplest candidate, fp32 in NCHW, which is never slower than
    plain fp32 (bf16 and channels_last win on some CPUs and models and lose on others: only a trial tells)."""
    if cap.device_type != "cuda":
        return cands[0]
    amp = cands[-1].amp
    preferred = Choice(amp, amp is not None)
    return preferred if preferred in cands else next((c for c in cands if c.amp == amp), cands[0])


def pick(cands: list[Choice], timings: dict[Choice, float], margin: float = TIE_MARGIN) -> Choice:
    """The first candidate (simplest first) within margin of the fastest."""
    present = [c for c in cands if c in timings]
    best = min(timings[c] for c in present)
    return next(c for c in present if timings[c] <= best * (1 + margin))


# ---------------------------------------------------------------- decision
def resolve(
    request: Request,
    cap: Capability,
    measure: Callable[[list[Choice]], Trial],
    cache: Optional[PrecisionCache] = None,
    key: str = "",
    saved: Optional[Choice] = None,
) -> Decision:
    """Decide SOLVER.AMP / CHANNELS_LAST: config, resume, capability, cache, then a trial (measure)."""
    auto = request.auto_keys
    if not auto:
        return Decision(request.fixed(), "config", "set in the config", auto_keys=auto)
    if saved is not None:
        return Decision(request.fixed(saved), "resume", "the run's own choice, reused on resume", auto_keys=auto)
    cands = candidates(cap, request)
    if len(cands) == 1:
        return Decision(cands[0], "capability", capability_reason(cap), auto_keys=auto)
    hit = cache.get(key) if cache is not None else None
    if hit is not None and hit[0] in cands:
        return Decision(hit[0], "cache", f"trial cached in {cache.path}", hit[1], auto_keys=auto)
    trial = measure(cands)
    if trial.timings_s is None:
        return Decision(fallback(cands, cap), "capability", f"{capability_reason(cap)}; trial skipped: {trial.note}",
                        auto_keys=auto)
    choice = pick(cands, trial.timings_s)
    timings = {c.label: round(t, 4) for c, t in trial.timings_s.items()}
    if cache is not None:
        cache.put(key, choice, timings)
    return Decision(choice, "trial", f"{trial.note}: " + ", ".join(f"{k} {v:.3g} s" for k, v in timings.items()),
                    timings, auto_keys=auto)


def apply(cfg: CfgNode, choice: Choice) -> CfgNode:
    """A frozen copy of cfg with SOLVER.AMP / AMP_DTYPE / CHANNELS_LAST set to the concrete choice."""
    out = cfg.clone()
    out.defrost()
    out.SOLVER.AMP = choice.amp is not None
    out.SOLVER.AMP_DTYPE = choice.amp or cfg.SOLVER.AMP_DTYPE
    out.SOLVER.CHANNELS_LAST = choice.channels_last
    out.freeze()
    return out


def saved_choice(state: dict) -> Optional[Choice]:
    """The choice a checkpoint's run trained with (its `precision` entry, else its resolved config)."""
    rec = state.get("precision")
    if isinstance(rec, dict) and "amp" in rec:
        return Choice(rec["amp"] or None, bool(rec["channels_last"]))
    import yaml

    try:
        solver = (yaml.safe_load(state.get("config") or "") or {}).get("SOLVER", {})
    except yaml.YAMLError:
        return None
    amp, cl = solver.get("AMP"), solver.get("CHANNELS_LAST")
    if not isinstance(amp, bool) or not isinstance(cl, bool):
        return None
    return Choice(solver.get("AMP_DTYPE", "bfloat16") if amp else None, cl)


# ---------------------------------------------------------------- cache
def cache_dir() -> str:
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "kdlab")


def cache_key(cap: Capability, cfg: CfgNode, batch_size: int, input_shape: tuple, cands: list[Choice]) -> str:
    """Device (+ torch version, threads), model pair, method and trainer, per-process batch, input shape, candidates."""
    teacher = cfg.DISTILLER.TEACHER if cfg.DISTILLER.TYPE != "NONE" else "-"
    parts = [cap.device_type, cap.name, f"torch {torch.__version__}", f"threads {torch.get_num_threads()}",
             cfg.DISTILLER.TYPE, f"trainer {cfg.SOLVER.TRAINER}", f"{teacher}->{cfg.DISTILLER.STUDENT}",
             f"batch {batch_size}",
             "x".join(str(int(s)) for s in input_shape), f"compile {bool(cfg.SOLVER.COMPILE)}",
             "/".join(c.label for c in cands)]
    return " | ".join(parts)


class PrecisionCache:
    """Trial results in one JSON file, written atomically; an unreadable file is ignored with a warning."""

    def __init__(self, folder: Optional[str] = None) -> None:
        self.path = os.path.join(folder or cache_dir(), CACHE_FILE)

    def _load(self) -> dict:
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
            if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
                raise ValueError("not a kdlab precision cache")
            return data["entries"] if isinstance(data.get("entries"), dict) else {}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError) as exc:
            log.warning("precision cache %s ignored (%s); it will be rewritten", self.path, exc)
            return {}

    def get(self, key: str) -> Optional[tuple[Choice, dict]]:
        entry = self._load().get(key)
        try:
            return Choice(entry["amp"] or None, bool(entry["channels_last"])), dict(entry.get("timings_s", {}))
        except (TypeError, KeyError):
            return None

    def put(self, key: str, choice: Choice, timings: dict) -> None:
        entries = self._load()
        entries[key] = {"amp": choice.amp or False, "channels_last": choice.channels_last, "timings_s": timings}
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".precision-", dir=os.path.dirname(self.path))
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"version": CACHE_VERSION, "entries": entries}, f, indent=1)
            os.replace(tmp, self.path)
        except OSError as exc:  # a read-only home must not stop training
            log.warning("could not write the precision cache %s (%s)", self.path, exc)


# ---------------------------------------------------------------- trial
def trial_budget(n_candidates: int) -> float:
    """Seconds the trial may take: TRIAL_BUDGET_S (or $KDLAB_PRECISION_TRIAL_S) per candidate; 0 = no trial."""
    text = os.environ.get(BUDGET_ENV, "")
    try:
        per = float(text) if text else TRIAL_BUDGET_S
    except ValueError:
        log.warning("%s=%r is not a number of seconds; using %g", BUDGET_ENV, text, TRIAL_BUDGET_S)
        per = TRIAL_BUDGET_S
    return max(per, 0.0) * n_candidates


def run_trial(
    make_step: Callable[[Choice], Callable[[int], None]],
    cands: list[Choice],
    batch_size: int,
    budget_s: float = TRIAL_BUDGET_S,
    sync: Callable[[], None] = lambda: None,
    clock: Callable[[], float] = time.perf_counter,
) -> Trial:
    """Time the candidates' steps interleaved, on the first n images of the batch, within budget_s.

    make_step(choice) returns step(n): one real training step on the first n images. The trial
    starts on PROBE_IMAGES images, grows to the largest of batch, batch/2, ... that leaves time for
    a warm-up and MAX_ROUNDS rounds, and runs MIN_ROUNDS to MAX_ROUNDS rounds (MIN_ROUNDS may overrun
    the budget by about a round). If not even one round fits after the first steps, it gives up.
    """
    if budget_s <= 0:
        return Trial(None, f"{BUDGET_ENV} is 0")
    start = clock()

    def timed(step: Callable[[int], None], n: int) -> float:
        sync()
        t0 = clock()
        step(n)
        sync()
        return clock() - t0

    n = min(batch_size, PROBE_IMAGES)
    steps, warm = _first_steps(make_step, cands, n, timed)
    per_image = sum(warm.values()) / n  # first steps carry one-off costs: a pessimistic estimate
    left = budget_s - (clock() - start)
    if left < per_image * n:  # not even one more round of steps fits
        return Trial(None, f"one step of each candidate on {n} images took {sum(warm.values()):.2f} s, "
                           f"too long for the {budget_s:g} s budget")
    grown = batch_size
    while grown > n and (MAX_ROUNDS + 1) * per_image * grown > left:
        grown //= 2
    if grown > n:
        n = grown
        for step in steps.values():
            timed(step, n)
    times: dict[Choice, list[float]] = {c: [] for c in steps}
    order = list(steps)
    while len(times[order[0]]) < MAX_ROUNDS:
        rounds = len(times[order[0]])
        last = sum(t[-1] for t in times.values()) if rounds else per_image * n
        if rounds >= MIN_ROUNDS and clock() - start + last > budget_s:
            break
        for c in order[rounds % len(order):] + order[: rounds % len(order)]:
            times[c].append(timed(steps[c], n))
    return Trial({c: statistics.median(t) for c, t in times.items()},
                 f"{len(times[order[0]])} interleaved steps each on {n} of {batch_size} images")


def _first_steps(make_step, cands: list[Choice], n: int, timed) -> tuple[dict, dict]:
    """Build and run once each candidate's step; a candidate other than the simplest that fails here
    (an operation without a kernel for its dtype, say) is dropped with a warning."""
    steps, warm = {}, {}
    for c in cands:
        try:
            steps[c] = make_step(c)
            warm[c] = timed(steps[c], n)
        except RuntimeError as exc:
            if c == cands[0]:
                raise
            steps.pop(c, None)
            log.warning("precision trial: %s fails here (%s); not a candidate", c.label, str(exc).splitlines()[0])
    return steps, warm


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Restore the torch (CPU and CUDA), numpy and python RNG states on exit: the trial draws no numbers
    that the run would otherwise have drawn."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)
