"""`gemmactl results`: baseline vs fine-tuned metrics of a run, its worst classes, and two plots."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from gemmactl.cli._common import connect, settings
from gemmactl.cli._options import JsonOpt
from gemmactl.cli._output import out

RunArg = Annotated[
    str | None, typer.Argument(help="Run id (default: the latest run with a metrics.json).", show_default=False)
]
OutOpt = Annotated[
    Path | None,
    typer.Option("--out", help="Local directory for the plots (default: ./gemmactl-results/<run>/).",
                 file_okay=False),
]
WorstOpt = Annotated[int, typer.Option("--worst", min=0, max=37, help="How many of the weakest classes to list.")]
NoPlotsOpt = Annotated[
    bool, typer.Option("--no-plots", help="Only read: do not draw or write confusion.png and loss.png.")
]

EPILOG = """Examples:

  gemmactl results                                 # the latest finished run

  gemmactl results 20260131-1200-a1b2 --out ./report

  gemmactl results --json | jq .delta
"""


def results(
    ctx: typer.Context,
    run: RunArg = None,
    out_dir: OutOpt = None,
    worst: WorstOpt = 5,
    no_plots: NoPlotsOpt = False,
    json: JsonOpt = False,
) -> None:
    """Show a run's accuracy and macro-F1 against the baseline, and write confusion.png and loss.png."""
    from gemmactl import results as res

    out.json_mode = json
    s, cloud = connect(settings(ctx))
    bucket = s.bucket_name
    run_id = run or res.latest_run(cloud, bucket)
    metrics = res.load_metrics(cloud, bucket, run_id)
    summary = res.summarize(run_id, metrics, worst=worst)
    if not no_plots:
        summary["plots"] = res.write_plots(cloud, bucket, run_id, metrics,
                                           out_dir or Path("gemmactl-results") / run_id)
    if json:
        out.json(summary)
        return
    _show(summary)


def _show(summary: dict[str, Any]) -> None:
    from gemmactl import events as ev

    base, final, delta = summary["baseline"], summary["final"], summary["delta"]
    what = ", ".join(f"{k} {summary[k]}" for k in ("model", "dataset", "train_size") if summary.get(k) is not None)
    out.text(f"[bold]run {summary['run']}[/bold]" + (f": {what}" if what else "")
             + f" · eval {summary.get('primary_mode') or '-'}, n={final.get('n')}")
    out.table(
        ["metric", "baseline", "fine-tuned", "delta"],
        [["accuracy", f"{ev.pct(base['accuracy'])} {ev.ci(base.get('accuracy_ci95'))}",
          f"{ev.pct(final['accuracy'])} {ev.ci(final.get('accuracy_ci95'))}",
          ev.signed(delta["accuracy"], percent=True)],
         ["macro-F1", f"{base.get('macro_f1', 0):.3f}", f"{final.get('macro_f1', 0):.3f}", ev.signed(delta["macro_f1"])],
         ["unknown answers", ev.pct(base.get("unknown_rate")), ev.pct(final.get("unknown_rate")),
          ev.signed(ev.delta(final.get("unknown_rate"), base.get("unknown_rate")), percent=True)]],
        title="baseline vs fine-tuned (accuracy with its 95 % CI)",
    )
    if len(summary.get("by_mode") or {}) > 1:
        out.table(["eval mode", "baseline", "fine-tuned", "delta", "macro-F1 (base → tuned)"],
                  [[mode, ev.pct(r["baseline"]["accuracy"]), ev.pct(r["final"]["accuracy"]),
                    ev.signed(r["delta"].get("accuracy"), percent=True),
                    f"{r['baseline']['macro_f1']:.3f} → {r['final']['macro_f1']:.3f}"]
                   for mode, r in summary["by_mode"].items()],
                  title="accuracy by eval mode")
    if summary["worst_classes"]:
        out.table(["class", "F1", "precision", "recall", "support"],
                  [[r["label"], f"{r.get('f1', 0):.2f}", f"{r.get('precision', 0):.2f}",
                    f"{r.get('recall', 0):.2f}", r.get("support")] for r in summary["worst_classes"]],
                  title="worst classes (fine-tuned, lowest F1)")
    if summary["most_confused"]:
        out.text("most confused: " + "; ".join(f"{c['true']} → {c['predicted']} ×{c['count']}"
                                                for c in summary["most_confused"]))
    out.text(_cost_line(summary))
    for name, where in (summary.get("plots") or {}).items():
        out.text(f"{name}: {where['bucket']}  (copy: {where['local']})")


def _cost_line(summary: dict[str, Any]) -> str:
    from gemmactl import events as ev

    timings = summary.get("timings") or {}
    parts = [f"{k.removesuffix('_s').replace('_', ' ')} {ev.duration(v)}" for k, v in timings.items()
             if isinstance(v, int | float)]
    peak = summary.get("peak_memory_gib")
    memory = f"peak GPU memory {peak:.1f} GiB" if isinstance(peak, int | float) else "peak GPU memory -"
    return "time: " + (", ".join(parts) or "-") + f" · {memory}"


def register(app: typer.Typer) -> None:
    """Adds `results` to the root app."""
    app.command("results", epilog=EPILOG)(results)
