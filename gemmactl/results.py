"""A run's results: find and read runs/<id>/metrics.json, summarise it, and draw confusion.png and loss.png.

Pure functions over the metrics dict (`summarize`, `confusion_png`, `loss_png`) plus two readers over
ports.Storage. matplotlib is imported only inside the plotting functions (Agg canvas, no pyplot, so
no global backend state and no display needed).
"""

from __future__ import annotations

import json
import re
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gemmactl import events as ev
from gemmactl.errors import GemmactlError, NotFoundError

if TYPE_CHECKING:
    from gemmactl.cloud import Cloud

_METRICS_RE = re.compile(r"^runs/([^/]+)/metrics\.json$")
_TAIL_BYTES = 16384  # enough of events.jsonl to find the last few events


class IncompleteRunError(GemmactlError):
    """The run exists but has no complete metrics.json (still running, or it failed)."""


def run_path(run_id: str, name: str) -> str:
    return f"runs/{run_id}/{name}"


# ------------------------------------------------------------------------------ reading


def latest_run(cloud: Cloud, bucket: str) -> str:
    """The run whose metrics.json was written last."""
    found = [(o.updated.timestamp() if o.updated else 0.0, m.group(1))
             for o in cloud.storage.list(bucket, "runs/") if (m := _METRICS_RE.match(o.name))]
    if not found:
        raise NotFoundError(f"no finished run in gs://{bucket}/runs/ (no metrics.json yet)", resource=bucket,
                            hint="`gemmactl status` lists executions; follow one with `gemmactl logs --follow`")
    return max(found)[1]


def load_metrics(cloud: Cloud, bucket: str, run_id: str) -> dict[str, Any]:
    """metrics.json of a finished run; IncompleteRunError (saying why) for a run still going or failed."""
    try:
        raw = cloud.storage.read_bytes(bucket, run_path(run_id, "metrics.json"))
    except NotFoundError:
        raise _why_no_metrics(cloud, bucket, run_id) from None
    try:
        metrics = json.loads(raw)
    except ValueError:
        raise IncompleteRunError(f"runs/{run_id}/metrics.json is not valid JSON (truncated?)",
                                 hint="re-run the job: the trainer rewrites it at the end") from None
    missing = [k for k in ("baseline", "final") if not isinstance(metrics.get(k), dict)
               or not isinstance(metrics[k].get("accuracy"), int | float)]
    if missing:
        raise IncompleteRunError(f"runs/{run_id}/metrics.json has no {' or '.join(missing)} evaluation yet",
                                 hint="the run may still be going: `gemmactl logs --follow`")
    return metrics


def _why_no_metrics(cloud: Cloud, bucket: str, run_id: str) -> GemmactlError:
    if not any(True for _ in cloud.storage.list(bucket, f"runs/{run_id}/")):
        return NotFoundError(f"no run {run_id} in gs://{bucket}/runs/", resource=run_id,
                             hint="`gemmactl results` shows the latest run; `gemmactl status` lists run ids")
    last = _last_events(cloud, bucket, run_id)
    errors = [e for e in last if e.get("event") == "error"]
    if errors:
        return IncompleteRunError(f"run {run_id} failed: {errors[-1].get('message', 'unknown error')}",
                                  hint="`gemmactl status` names its execution; `gemmactl logs EXECUTION` shows why")
    where = f" (last: {ev.describe(last[-1])})" if last else ""
    return IncompleteRunError(f"run {run_id} has no metrics.json yet: still running{where}",
                              hint="follow it with `gemmactl logs --follow`")


def _last_events(cloud: Cloud, bucket: str, run_id: str) -> list[dict[str, Any]]:
    name = run_path(run_id, "events.jsonl")
    info = cloud.storage.stat(bucket, name)
    if info is None:
        return []
    data = cloud.storage.read_bytes(bucket, name, start=max(0, info.size - _TAIL_BYTES))
    return [e for line in data.decode("utf-8", "replace").splitlines() if (e := ev.parse_line(line))]


# ------------------------------------------------------------------------------ summary


def _headline(report: dict[str, Any]) -> dict[str, Any]:
    keys = ("accuracy", "accuracy_ci95", "macro_f1", "n", "unknown", "unknown_rate")
    return {k: report.get(k) for k in keys}


def worst_classes(report: dict[str, Any], count: int = 5) -> list[dict[str, Any]]:
    """The classes with the lowest F1 (only those present in the eval set), ties broken by name."""
    rows = [{"label": name, **scores} for name, scores in (report.get("per_class") or {}).items()
            if scores.get("support", 0) > 0]
    return sorted(rows, key=lambda r: (r.get("f1", 0.0), r["label"]))[:count]


def most_confused(report: dict[str, Any], count: int = 5) -> list[dict[str, Any]]:
    """The largest off-diagonal cells of the confusion matrix (true → predicted)."""
    labels, matrix = report.get("labels") or [], report.get("confusion") or []
    cells = [(n, i, j) for i, row in enumerate(matrix) for j, n in enumerate(row) if i != j and n > 0]
    cells.sort(key=lambda c: (-c[0], c[1], c[2]))
    return [{"true": labels[i], "predicted": labels[j], "count": n} for n, i, j in cells[:count]
            if i < len(labels) and j < len(labels)]


def primary_mode(metrics: dict[str, Any]) -> str | None:
    """The eval mode the headline numbers come from (the first of several when eval_mode is "both")."""
    for mode, report in (metrics.get("final_by_mode") or {}).items():
        if report.get("accuracy") == metrics["final"].get("accuracy") and \
                report.get("macro_f1") == metrics["final"].get("macro_f1"):
            return mode
    return metrics.get("eval_mode")


def by_mode(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Baseline, fine-tuned and delta per eval mode, when the trainer measured several."""
    base, final = metrics.get("baseline_by_mode") or {}, metrics.get("final_by_mode") or {}
    rows = {}
    for mode in final:
        if mode in base:
            b, f = _headline(base[mode]), _headline(final[mode])
            rows[mode] = {"baseline": b, "final": f, "delta": {
                k: f[k] - b[k] for k in ("accuracy", "macro_f1")
                if isinstance(f.get(k), int | float) and isinstance(b.get(k), int | float)}}
    return rows


def summarize(run_id: str, metrics: dict[str, Any], *, worst: int = 5) -> dict[str, Any]:
    """The --json document of `gemmactl results` (and what the tables show)."""
    base, final = metrics["baseline"], metrics["final"]
    delta = metrics.get("delta") or {}
    config = metrics.get("config") or {}
    return {
        "run": run_id,
        "model": config.get("model_id"),
        "dataset": config.get("dataset"),
        "train_size": config.get("train_size"),
        "eval_mode": metrics.get("eval_mode"),
        "baseline": _headline(base),
        "final": _headline(final),
        "delta": {
            "accuracy": delta.get("accuracy", final["accuracy"] - base["accuracy"]),
            "macro_f1": delta.get("macro_f1", (final.get("macro_f1") or 0) - (base.get("macro_f1") or 0)),
        },
        "primary_mode": primary_mode(metrics),
        "by_mode": by_mode(metrics),
        "worst_classes": worst_classes(final, worst),
        "most_confused": most_confused(final, worst),
        "timings": metrics.get("timings") or {},
        "peak_memory_gib": metrics.get("peak_memory_gib"),
        "versions": metrics.get("versions") or {},
    }


# ------------------------------------------------------------------------------ plots


def _png(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def confusion_png(report: dict[str, Any], *, title: str = "fine-tuned") -> bytes:
    """Row-normalised confusion matrix (rows true, columns predicted), counts kept in the colour scale's
    label; normalising keeps rare breeds as visible as common ones."""
    from matplotlib.figure import Figure

    labels = [str(x).replace("_", " ") for x in report.get("labels") or []]
    matrix = report.get("confusion") or []
    shares = [[n / (sum(row) or 1) for n in row] for row in matrix]
    k = len(labels)
    size = max(4.0, 0.28 * k + 2)
    fig = Figure(figsize=(size + 1.5, size), dpi=100)
    ax = fig.add_subplot()
    image = ax.imshow(shares or [[0.0]], cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks(range(k), labels=labels, rotation=90, fontsize=7)
    ax.set_yticks(range(k), labels=labels, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    # Unknown answers have no column; the title says how many there were.
    ax.set_title(f"confusion, {title}: accuracy {ev.pct(report.get('accuracy'))}, n={report.get('n', '?')}, "
                 f"unknown {ev.pct(report.get('unknown_rate'))}")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    return _png(fig)


def loss_png(train_loss: list[dict[str, Any]]) -> bytes:
    """Training loss per step, with an exponential moving average when there are enough points."""
    from matplotlib.figure import Figure

    points = [(p["step"], p["loss"]) for p in train_loss
              if isinstance(p.get("step"), int | float) and isinstance(p.get("loss"), int | float)]
    fig = Figure(figsize=(8, 4.5), dpi=100)
    ax = fig.add_subplot()
    steps, losses = [s for s, _ in points], [v for _, v in points]
    ax.plot(steps, losses, color="#9bbbe0", linewidth=1, label="loss")
    if len(points) >= 20:
        ax.plot(steps, _ema(losses, 0.9), color="#1f4e8c", linewidth=2, label="moving average")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    return _png(fig)


def _ema(values: list[float], beta: float) -> list[float]:
    smoothed, current = [], values[0]
    for v in values:
        current = beta * current + (1 - beta) * v
        smoothed.append(current)
    return smoothed


def write_plots(cloud: Cloud, bucket: str, run_id: str, metrics: dict[str, Any],
                out_dir: Path) -> dict[str, dict[str, str]]:
    """Render both plots and write each next to metrics.json and into `out_dir`; returns where they went."""
    plots = {"confusion.png": confusion_png(metrics["final"])}
    if metrics.get("train_loss"):
        plots["loss.png"] = loss_png(metrics["train_loss"])
    out_dir.mkdir(parents=True, exist_ok=True)
    root = cloud.storage.local_path(bucket)
    written = {}
    for name, data in plots.items():
        cloud.storage.write_bytes(bucket, run_path(run_id, name), data, content_type="image/png")
        (out_dir / name).write_bytes(data)
        stored = str(Path(root) / run_path(run_id, name)) if root else f"gs://{bucket}/{run_path(run_id, name)}"
        written[name.removesuffix(".png")] = {"bucket": stored, "local": str(out_dir / name)}
    return written
