"""The verbs that read the attack log: report, tune. Neither touches the kernel."""

from __future__ import annotations

import click

from ._shared import common, config_option, emit, show


def bounds(since: str | None, until: str | None) -> tuple[float | None, float | None]:
    """--since and --until as times; a bad one is a usage error naming it."""
    import time as _time

    from ..report import parse_when

    now = _time.time()
    out = []
    for hint, text in (("--since", since), ("--until", until)):
        try:
            out.append(parse_when(text, now))
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint=hint) from None
    return out[0], out[1]


DEFAULT_TOP, MAX_TOP = 10, 10000  # report's sources per rule and per episode
DEFAULT_MARGIN, MAX_MARGIN = 2.0, 100.0  # tune's headroom over the busiest legitimate source


def margin_option(func):
    """--margin: a number from 1 to MAX_MARGIN (click's FloatRange lets NaN through)."""

    def finite(ctx: click.Context, param: click.Parameter, value: float) -> float:
        if not 1.0 <= value <= MAX_MARGIN:  # False for NaN
            raise click.BadParameter(f"{value} is not a number from 1 to {MAX_MARGIN}")
        return value
    return click.option("--margin", default=DEFAULT_MARGIN, show_default=True, type=float, callback=finite,
                        help="Headroom over the busiest legitimate source.")(func)


@click.command()
@config_option
@click.option("--log", "log_path", type=click.Path(dir_okay=False), default=None, help="Attack log to read.")
@click.option("--since", default=None, help="'15m', '1h', '2d' ago, or an ISO 8601 time.")
@click.option("--until", default=None, help="As --since.")
@click.option("--rule", default=None, help="Only this rule group (e.g. syn-flood).")
@click.option("--top", default=DEFAULT_TOP, show_default=True, type=click.IntRange(1, MAX_TOP),
              help="Sources per rule and per episode.")
@click.option("--json", "as_json", is_flag=True, help="Print data as JSON (same as --format json).")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "csv"]), default="text", show_default=True,
              help="csv: one row per source (or shared /24, /48) per episode, for spreadsheets.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="Also draw the timeline to FILE.png (matplotlib) or FILE.svg.")
def report(config, log_path, since, until, rule, top, as_json, fmt, plot) -> None:
    """Attack episodes, the sources behind each (with their networks), top sources per rule and a
    per-minute timeline from the attack log."""
    from .. import report as report_mod
    from ..records import Records

    if log_path:
        path = log_path
    else:
        from ..policy.load import load_policy
        path = load_policy(config)[0].sampler.log
    when = bounds(since, until)
    if plot and not plot.endswith((".svg", ".png")):
        raise click.BadParameter("the picture is FILE.png or FILE.svg", param_hint="--plot")
    if plot and plot.endswith(".png"):
        from ..optional import require
        require(("matplotlib",), "plot", "report --plot FILE.png (FILE.svg needs nothing)")
    records = Records(path)
    rep = report_mod.build(records, *when, rule, top)
    rep["skipped_lines"] = records.skipped
    if plot:
        from .. import report_plot
        from ..configfile import open_output
        png = plot.endswith(".png")
        with open_output(plot, "wb" if png else "w") as f:  # the operator's path: no symlink, FIFO or other's file
            if png:
                report_plot.timeline_png(rep, f)
            else:
                f.write(report_plot.timeline_svg(rep))
    if fmt == "csv":
        show(report_mod.format_csv(rep))
    else:
        emit(rep, as_json or fmt == "json", report_mod.format_text(rep))


@click.command()
@common
@click.option("--log", "log_path", type=click.Path(dir_okay=False), default=None, help="Attack log to read.")
@click.option("--since", default="24h", show_default=True, help="'15m', '1h', '2d' ago, or an ISO 8601 time.")
@click.option("--until", default=None, help="As --since.")
@margin_option
def tune(config, as_json, log_path, since, until, margin) -> None:
    """Propose per-source thresholds from what this node observed (monitor mode); writes nothing."""
    from .. import tune as tune_mod
    from ..policy.load import load_policy
    from ..records import Records

    policy, _source = load_policy(config)
    when = bounds(since, until)
    records = Records(log_path or policy.sampler.log)
    found = tune_mod.analyse(policy, records, *when)
    prop = tune_mod.proposal(policy, found, margin)
    prop["skipped_lines"] = records.skipped
    emit(prop, as_json, tune_mod.format_text(prop))
