"""The comparisons: what is built, what one "step" is, and which ratio is reported."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.memory import peak_bytes
from benchmarks.timing import Timing, compare

SPACE = Path(__file__).resolve().parent.parent / "spaces" / "mbv2_metapool.yaml"
NUM_CLASSES = 10
# the targets of issue 18: a supernet step within 1.5× of its backbone's and 1.3× of its memory;
# a child as fast as its backbone (5 %)
STEP_TARGET, MEMORY_TARGET, CHILD_LATENCY_TARGET = 1.5, 1.3, 1.05


@dataclass
class Settings:
    device: torch.device
    rounds: int = 7
    warmup: int = 2
    batch: int = 32
    resolutions: tuple[int, ...] = (32, 64)
    latency_batches: tuple[int, ...] = (1, 32)
    latency_resolution: int = 224
    child_train_resolution: int = 64
    search_epochs: int | None = None  # None: the space's own recipe
    search_steps: int | None = None
    search_repeats: int = 1
    amp: bool = False
    channels_last: bool = False
    compile: str | None = None  # a torch.compile backend ("inductor"): the step part also times compiled models
    space: Path = SPACE
    overrides: tuple[str, ...] = ()  # --set: applied to the space before each part's own overrides


@dataclass
class Row:
    """One reported ratio: ``numerator / denominator`` (times or bytes), with its target."""

    group: str
    name: str
    numerator: str
    denominator: str
    num: float
    den: float
    unit: str  # "s" or "B"
    target: float | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.num / self.den if self.den else float("nan")

    @property
    def passed(self) -> bool | None:
        return None if self.target is None else self.ratio <= self.target

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "name": self.name,
            "numerator": self.numerator,
            "denominator": self.denominator,
            "num": self.num,
            "den": self.den,
            "unit": self.unit,
            "ratio": self.ratio,
            "target": self.target,
            "passed": self.passed,
            "note": self.note,
            **self.extra,
        }


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


def load(settings: Settings, *overrides: str):
    from rfsearch import load_space

    return load_space(settings.space, [*settings.overrides, *overrides])


def build_pair(settings: Settings, pad_first: bool = True) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(backbone, supernet with fused mixing, the same supernet with the plain weighted sum),
    all from the same seed and on the device (placed as ``_place`` does)."""
    from rfsearch.graph.backbone import build_backbone
    from rfsearch.supernet import build_supernet

    space = load(settings)
    torch.manual_seed(0)
    supernet = build_supernet(space, NUM_CLASSES)
    torch.manual_seed(0)
    backbone = build_backbone(space.backbone, NUM_CLASSES)
    plain = copy.deepcopy(supernet)
    for mixed in supernet.mixed_ops.values():
        mixed.fast = True
    for mixed in plain.mixed_ops.values():
        mixed.fast = False
    return tuple(_place(m, settings, pad_first) for m in (backbone, supernet, plain))  # type: ignore[return-value]


def _place(model: nn.Module, settings: Settings, pad_first: bool = True) -> nn.Module:
    """As the search and the retrain place a model (``rfsearch.train.setup.place_model``);
    ``pad_first=False`` keeps torch's own grouped convolutions (the layout part's reference)."""
    from rfsearch.train.setup import place_model

    return place_model(model, settings.device, settings.channels_last, pad_first)


def _autocast(settings: Settings):
    if settings.amp and settings.device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def batch(settings: Settings, resolution: int, size: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(size or settings.batch, 3, resolution, resolution, generator=g)
    y = torch.randint(0, NUM_CLASSES, (x.shape[0],), generator=g)
    x, y = x.to(settings.device), y.to(settings.device)
    if settings.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y


def train_step(model: nn.Module, settings: Settings, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """One SGD training step of all trainable parameters (the supernet's α included: the search's
    weight step computes α's gradient too), with the project's optimizer settings."""
    from rfsearch.space.schema import WeightOptimizer
    from rfsearch.train.engine import sgd

    model.train()
    opt = sgd([p for p in model.parameters() if p.requires_grad], WeightOptimizer())

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with _autocast(settings):
            logits = model(x)
        loss = nn.functional.cross_entropy(logits.float(), y)
        loss.backward()
        opt.step()

    return step


def inference(model: nn.Module, settings: Settings, x: torch.Tensor) -> Callable[[], None]:
    model.eval()

    @torch.no_grad()
    def run() -> None:
        with _autocast(settings):
            model(x)

    return run


def _ratio_row(group: str, name: str, timings: dict[str, Timing], num: str, den: str, target: float | None, note: str = "") -> Row:
    return Row(
        group,
        name,
        num,
        den,
        timings[num].median,
        timings[den].median,
        "s",
        target,
        note,
        {"timings": {k: v.to_dict() for k, v in timings.items()}},
    )


# --------------------------------------------------------------------------------------------
# 1. Supernet train step vs backbone train step; 2. peak memory of each
# --------------------------------------------------------------------------------------------


def supernet_steps(settings: Settings, log: Callable[[str], None]) -> list[Row]:
    backbone, supernet, plain = build_pair(settings)
    rows: list[Row] = []
    for res in settings.resolutions:
        x, y = batch(settings, res)
        fns = {
            "backbone": train_step(backbone, settings, x, y),
            "supernet": train_step(supernet, settings, x, y),
            "supernet (plain sum)": train_step(plain, settings, x, y),
        }
        if settings.compile:  # the same modules, compiled: the warm-up rounds compile them
            log(f"torch.compile (backend {settings.compile}) of the backbone and the supernet: minutes, the first time")
            fns["backbone, compiled"] = train_step(torch.compile(backbone, backend=settings.compile), settings, x, y)
            fns["supernet, compiled"] = train_step(torch.compile(supernet, backend=settings.compile), settings, x, y)
        log(f"train step at {res} px, batch {x.shape[0]}: {settings.rounds} rounds")
        timings = compare(fns, settings.rounds, settings.warmup, settings.device)
        step = f"train step {res}px bs{x.shape[0]}"
        rows.append(_ratio_row("supernet", step, timings, "supernet", "backbone", STEP_TARGET))
        rows.append(_ratio_row("supernet", f"{step} (plain sum, before)", timings, "supernet (plain sum)", "backbone", None, "reference: every candidate computed and summed"))
        if settings.compile:
            rows.append(_ratio_row("compiled", f"{step}, both compiled", timings, "supernet, compiled", "backbone, compiled", STEP_TARGET))
            for model in ("backbone", "supernet"):
                rows.append(_ratio_row("compiled", f"{step}: {model}, compiled / eager", timings, f"{model}, compiled", model, None))
        log(f"peak memory of one train step at {res} px")
        peaks = {name: peak_bytes(fns[name], settings.device) for name in ("backbone", "supernet", "supernet (plain sum)")}
        if all(v is not None for v in peaks.values()):
            rows.append(Row("memory", f"peak memory {res}px bs{x.shape[0]}", "supernet", "backbone", peaks["supernet"], peaks["backbone"], "B", MEMORY_TARGET))
            rows.append(Row("memory", f"peak memory {res}px bs{x.shape[0]} (plain sum, before)", "supernet (plain sum)", "backbone", peaks["supernet (plain sum)"], peaks["backbone"], "B", None))
    return rows


# --------------------------------------------------------------------------------------------
# 1a. Where the supernet's step goes: one candidate family at a time
# --------------------------------------------------------------------------------------------

FAMILIES = {
    "skip only": "[skip]",
    "skip + global": "[skip, global]",
    "skip + avgpool 3/5/7": "[skip, {avgpool: {k: [3, 5, 7]}}]",
    "skip + maxpool 3/5/7": "[skip, {maxpool: {k: [3, 5, 7]}}]",
}


def family_steps(settings: Settings, log: Callable[[str], None]) -> list[Row]:
    """The train step of the space's supernet with its candidates cut to one family (and ``skip``),
    beside the whole supernet and the backbone: what each family adds to the step."""
    from rfsearch.supernet import build_supernet

    backbone, supernet, _ = build_pair(settings)
    models = {"backbone": backbone, "supernet": supernet}
    for name, candidates in FAMILIES.items():
        torch.manual_seed(0)
        models[f"supernet, {name}"] = _place(build_supernet(load(settings, f"candidates={candidates}"), NUM_CLASSES), settings)
    rows: list[Row] = []
    for res in settings.resolutions:
        x, y = batch(settings, res)
        fns = {name: train_step(model, settings, x, y) for name, model in models.items()}
        log(f"train step at {res} px by candidate family, batch {x.shape[0]}: {settings.rounds} rounds")
        timings = compare(fns, settings.rounds, settings.warmup, settings.device)
        for name in models:
            if name != "backbone":
                rows.append(_ratio_row("families", f"train step {res}px bs{x.shape[0]}: {name}", timings, name, "backbone", None))
    return rows


# --------------------------------------------------------------------------------------------
# 2a. How the loops place a model: NHWC against NCHW; on CPU, grouped convolutions padded first
# --------------------------------------------------------------------------------------------


def layout_steps(settings: Settings, log: Callable[[str], None]) -> list[Row]:
    """The backbone's and the supernet's train step in channels_last / in the default layout, and
    (on CPU) with grouped convolutions padded first / torch's own, side by side: the measurements
    behind ``train.channels_last`` (on by default, on CPU too) and ``RunSetup.place``'s
    pad-first convolutions, which change a step only where a map is smaller than a depthwise
    kernel's reach (``--set backbone.max_downsample=16`` at 32 px: the Fashion-MNIST main job's 2×2 stage)."""
    backbone, supernet, _ = build_pair(dataclasses.replace(settings, channels_last=False), pad_first=False)
    nhwc = dataclasses.replace(settings, channels_last=True)
    nchw = dataclasses.replace(settings, channels_last=False)
    pad_first_rows = settings.device.type == "cpu"  # RunSetup.place pads first on CPU only
    variants = [("NHWC", nhwc, True), ("NCHW", nchw, True)] + ([("NHWC, torch's grouped convs", nhwc, False)] if pad_first_rows else [])
    rows: list[Row] = []
    for res in settings.resolutions:
        fns = {}
        for variant, s, pad_first in variants:
            x, y = batch(s, res)
            for name, model in (("backbone", backbone), ("supernet", supernet)):
                fns[f"{name} {variant}"] = train_step(_place(copy.deepcopy(model), s, pad_first), s, x, y)
        log(f"train step at {res} px: {', '.join(v for v, _, _ in variants)}; batch {settings.batch}: {settings.rounds} rounds")
        timings = compare(fns, settings.rounds, settings.warmup, settings.device)
        for name in ("backbone", "supernet"):
            rows.append(_ratio_row("layout", f"train step {res}px bs{settings.batch}: {name}, NHWC / NCHW", timings, f"{name} NHWC", f"{name} NCHW", None))
        if pad_first_rows:
            for name in ("backbone", "supernet"):
                rows.append(
                    _ratio_row("layout", f"train step {res}px bs{settings.batch}: {name}, grouped convs padded first / torch's", timings, f"{name} NHWC", f"{name} NHWC, torch's grouped convs", None)
                )
    return rows


# --------------------------------------------------------------------------------------------
# 2b. One PMPL step: the weight gradient at the new α (Algorithm 1) vs reused from before α moved
# --------------------------------------------------------------------------------------------


def pmpl_steps(settings: Settings, log: Callable[[str], None]) -> list[Row]:
    """PMPL's whole step (θ′, α step on a meta batch, weight step) with ``weight_grad: after_alpha``
    (a second forward and backward) and ``reuse``, on one supernet each from the same seed, at the
    space's resolution and the benchmark's batch."""
    from rfsearch.search.context import SearchContext
    from rfsearch.strategies import resolve_strategy
    from rfsearch.strategies.pmpl import PMPL
    from rfsearch.supernet import build_supernet
    from rfsearch.train.engine import sgd

    space = load(settings)
    res = space.backbone.input_size
    train, meta = batch(settings, res, seed=0), batch(settings, res, seed=1)
    recipe = space.train.search
    fns = {}
    for mode in ("after_alpha", "reuse"):
        torch.manual_seed(0)
        net = _place(build_supernet(space, NUM_CLASSES), settings).train()
        ctx = SearchContext(
            supernet=net,
            model=net,
            weight_optimizer=sgd(net.weight_parameters(), recipe.optimizer),
            device=settings.device,
            amp=settings.amp,
            channels_last=settings.channels_last,
            grad_clip=recipe.grad_clip,
        )
        strategy = PMPL(PMPL.Options.model_validate({**resolve_strategy(space)[1].model_dump(), "rho": None, "weight_grad": mode, "arch_warmup_epochs": 0}), net, seed=0)  # the α phase
        strategy.setup(ctx)
        fns[mode] = lambda strategy=strategy, ctx=ctx: strategy.step(ctx, train, meta)
    log(f"PMPL step at {res} px, batch {settings.batch}: {settings.rounds} rounds")
    timings = compare(fns, settings.rounds, settings.warmup, settings.device)
    return [_ratio_row("pmpl", f"PMPL step {res}px bs{settings.batch}, weight gradient at the new α / reused", timings, "after_alpha", "reuse", None, "the α phase of the search; α-frozen warm-up steps cost the same in both")]


# --------------------------------------------------------------------------------------------
# 3. PMPL search vs the same search with rho: null
# --------------------------------------------------------------------------------------------


def search_overrides(settings: Settings, rho: str) -> list[str]:
    """The space's own search recipe (its default budget), with only ρ changed; ``--quick`` and the
    ``--search-*`` options shorten it."""
    out = [f"strategy.rho={rho}", f"train.device={settings.device.type}", f"train.amp={str(settings.amp).lower()}", f"train.channels_last={str(settings.channels_last).lower()}"]
    if settings.search_epochs:
        out.append(f"train.search.epochs={settings.search_epochs}")
    if settings.search_steps:
        out.append(f"train.search.steps_per_epoch={settings.search_steps}")
    return out


def pmpl_search(settings: Settings, log: Callable[[str], None]) -> tuple[list[Row], Any]:
    """Wall time of ``run_search`` (data, steps, fixing, checkpoints, history: everything) with
    PMPL's progressive fixing and stopping, and with ``rho: null`` (every point open for the whole
    budget, then fixed to argmax), same seed, alternating. Returns the row and PMPL's arch."""
    from rfsearch.search.loop import run_search
    from rfsearch.strategies import resolve_strategy

    spaces = {"pmpl": load(settings, *search_overrides(settings, "0.2")), "rho null": load(settings, *search_overrides(settings, "null"))}
    results: dict[str, Any] = {}
    samples: dict[str, Timing] = {k: Timing() for k in spaces}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(settings.search_repeats):
            for name in (list(spaces) if r % 2 == 0 else list(spaces)[::-1]):
                log(f"search ({name}), repeat {r + 1}/{settings.search_repeats}")
                start = time.perf_counter()
                result = run_search(spaces[name], Path(tmp) / f"{name.replace(' ', '_')}-{r}", show_progress=False)
                samples[name].samples.append(time.perf_counter() - start)
                results[name] = result
    recipe = spaces["pmpl"].train.search
    arch_lr = resolve_strategy(spaces["pmpl"])[1].arch_optimizer.lr
    pm, null = results["pmpl"], results["rho null"]
    fixed_at = sorted(p.fixed_step for p in pm.arch.points if p.fixed_step is not None)
    early = [s for s in fixed_at if s < null.steps]
    note = (
        f"{recipe.epochs} epochs × {null.steps // max(recipe.epochs, 1)} steps, batch {recipe.batch_size}, α lr {arch_lr}: "
        f"pmpl ran {pm.steps} of {null.steps} steps; {len(early)} of {len(fixed_at)} points crossed ρ"
        + (f" (steps {early[0]}–{early[-1]})" if early else " (the rest fixed to argmax at the end)")
    )
    row = _ratio_row("search", "PMPL search wall time", samples, "pmpl", "rho null", 0.6, note)
    row.extra.update({"pmpl_fixed_steps": fixed_at, "pmpl_steps": pm.steps, "null_steps": null.steps})
    return [row], pm.arch


# --------------------------------------------------------------------------------------------
# 4. Child inference latency and train step vs the backbone
# --------------------------------------------------------------------------------------------

LATENCY_SPACE = SPACE.parent / "mbv2_metapool_imagenet.yaml"


def children(settings: Settings, searched_arch: Any | None) -> tuple[nn.Module, dict[str, nn.Module]]:
    """The backbone and children in the 224 px geometry of ``mbv2_metapool_imagenet.yaml`` (plain
    MobileNetV2 strides; post-mix layers off, as in ``mbv2_metapool.yaml``): the searched choices
    (when a search ran; matched by point path), a fixed mix that uses every candidate twice, and
    all-``global`` (the paper's usual outcome)."""
    from rfsearch.arch import fixed_arch
    from rfsearch.discretize import build_child
    from rfsearch.graph.backbone import build_backbone
    from rfsearch.graph.points import discover_points
    from rfsearch import load_space

    space = load_space(LATENCY_SPACE, ["post=[]"])
    torch.manual_seed(0)
    backbone = build_backbone(space.backbone, NUM_CLASSES)
    points = discover_points(build_backbone(space.backbone, NUM_CLASSES), space)
    rules: dict[str, Callable[[Any], list[str]]] = {}
    if searched_arch is not None:
        chosen = {p.path: p.choice_names for p in searched_arch.points}
        if all(p.path in chosen for p in points):
            rules["searched"] = lambda p: chosen[p.path]
    rules["every op twice"] = lambda p: [p.candidate_names[p.index % len(p.candidate_names)]]
    rules["all global"] = lambda p: ["global"] if "global" in p.candidate_names else [p.candidate_names[0]]
    out: dict[str, nn.Module] = {}
    for name, rule in rules.items():
        torch.manual_seed(0)
        out[name] = build_child(fixed_arch(points, rule, backbone=space.backbone, num_classes=NUM_CLASSES))
    return _place(backbone, settings), {k: _place(m, settings) for k, m in out.items()}


def child_rows(settings: Settings, searched_arch: Any | None, log: Callable[[str], None]) -> list[Row]:
    """Inference as the models come and with BN folded into the convolutions (both sides alike:
    the fair comparison for deployment), onnxruntime against PyTorch, and a train step."""
    from rfsearch.inference import fold_batchnorm

    backbone, kids = children(settings, searched_arch)
    models = {"backbone": backbone, **{f"child ({k})": m for k, m in kids.items()}}
    folded = {f"{k}, BN folded": _place(fold_batchnorm(m), settings) for k, m in models.items()}
    rows: list[Row] = []
    onnx = settings.device.type == "cpu" and _has_onnxruntime(log)
    for bs in settings.latency_batches:
        x, _ = batch(settings, settings.latency_resolution, bs)
        fns = {k: inference(m, settings, x) for k, m in {**models, **folded}.items()}
        if onnx:
            fns.update({f"{k}, onnxruntime": _onnx_session(m, x) for k, m in models.items()})
        log(f"inference latency at {settings.latency_resolution} px, batch {bs}")
        timings = compare(fns, settings.rounds, settings.warmup, settings.device)
        for k in kids:
            name = f"latency {settings.latency_resolution}px bs{bs}: {k}"
            rows.append(_ratio_row("child", name, timings, f"child ({k})", "backbone", CHILD_LATENCY_TARGET))
            rows.append(_ratio_row("child", f"{name}, BN folded", timings, f"child ({k}), BN folded", "backbone, BN folded", CHILD_LATENCY_TARGET))
            if f"child ({k}), onnxruntime" in fns and "backbone, onnxruntime" in fns:
                rows.append(_ratio_row("child", f"{name}, both in onnxruntime", timings, f"child ({k}), onnxruntime", "backbone, onnxruntime", CHILD_LATENCY_TARGET))
        if "child (all global), onnxruntime" in fns:
            rows.append(_ratio_row("child", f"latency {settings.latency_resolution}px bs{bs}: all global, ONNX", timings, "child (all global), onnxruntime", "child (all global)", 1.0))
    x, y = batch(settings, settings.child_train_resolution)
    fns = {"backbone": train_step(backbone, settings, x, y), **{f"child ({k})": train_step(m, settings, x, y) for k, m in kids.items()}}
    log(f"child train step at {settings.child_train_resolution} px, batch {x.shape[0]}")
    timings = compare(fns, settings.rounds, settings.warmup, settings.device)
    for k in kids:
        rows.append(_ratio_row("child", f"train step {settings.child_train_resolution}px bs{x.shape[0]}: {k}", timings, f"child ({k})", "backbone", None))
    return rows


def _has_onnxruntime(log: Callable[[str], None]) -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        log("onnxruntime is not installed: no ONNX rows (pip install 'rfsearch[export]')")
        return False
    return True


def _onnx_session(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """The model (a child or the backbone) exported by ``rfsearch.export_child`` and run by
    onnxruntime with torch's thread count."""
    import onnxruntime

    from rfsearch.export import export_child

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    with tempfile.TemporaryDirectory(prefix="rfsearch-bench-") as tmp:
        path = export_child(model, Path(tmp) / "model.onnx", "onnx", input_size=x.shape[-1]).path
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.cpu().contiguous().numpy()}
    return lambda: session.run(None, feed)
