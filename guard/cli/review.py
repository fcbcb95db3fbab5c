"""The verbs that read the attack log: report, tune. Neither touches the kernel."""

from __future__ import annotations

import click

from ._shared import common, config_option, emit


@click.command()
@config_option
@click.option("--log", "log_path", type=click.Path(dir_okay=False), default=None, help="Attack log to read.")
@click.option("--since", default=None, help="'15m', '1h', '2d' ago, or an ISO 8601 time.")
@click.option("--until", default=None, help="As --since.")
@click.option("--rule", default=None, help="Only this rule group (e.g. syn-flood).")
@click.option("--top", default=10, show_default=True, help="Sources per rule and per episode.")
@click.option("--json", "as_json", is_flag=True, help="Print data as JSON (same as --format json).")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "csv"]), default="text", show_default=True,
              help="csv: one row per source (or shared /24, /48) per episode, for spreadsheets.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="Also draw the timeline to FILE.png (matplotlib) or FILE.svg.")
def report(config, log_path, since, until, rule, top, as_json, fmt, plot) -> None:
    """Attack episodes, the sources behind each (with their networks), top sources per rule and a
    per-minute timeline from the attack log."""
    import time as _time

    from .. import report as report_mod
    from ..attacklog import read_records

    if log_path:
        path = log_path
    else:
        from ..policy.load import load_policy
        path = load_policy(config)[0].sampler.log
    now = _time.time()
    try:
        bounds = report_mod.parse_when(since, now), report_mod.parse_when(until, now)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if plot and not plot.endswith((".svg", ".png")):
        raise click.BadParameter("the picture is FILE.png or FILE.svg", param_hint="--plot")
    rep = report_mod.build(read_records(path), *bounds, rule, top)
    if plot:
        from .. import report_plot
        if plot.endswith(".png"):
            report_plot.timeline_png(rep, plot)
        else:
            with open(plot, "w") as f:
                f.write(report_plot.timeline_svg(rep))
    if fmt == "csv":
        click.echo(report_mod.format_csv(rep), nl=False)
    else:
        emit(rep, as_json or fmt == "json", report_mod.format_text(rep))


@click.command()
@common
@click.option("--log", "log_path", type=click.Path(dir_okay=False), default=None, help="Attack log to read.")
@click.option("--since", default="24h", show_default=True, help="'15m', '1h', '2d' ago, or an ISO 8601 time.")
@click.option("--until", default=None, help="As --since.")
@click.option("--margin", default=2.0, show_default=True, type=click.FloatRange(min=1.0),
              help="Headroom over the busiest legitimate source.")
def tune(config, as_json, log_path, since, until, margin) -> None:
    """Propose per-source thresholds from what this node observed (monitor mode); writes nothing."""
    import time as _time

    from .. import report as report_mod
    from .. import tune as tune_mod
    from ..attacklog import read_records
    from ..policy.load import load_policy

    policy, _source = load_policy(config)
    now = _time.time()
    try:
        bounds = report_mod.parse_when(since, now), report_mod.parse_when(until, now)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    found = tune_mod.analyse(policy, read_records(log_path or policy.sampler.log), *bounds)
    prop = tune_mod.proposal(policy, found, margin)
    emit(prop, as_json, tune_mod.format_text(prop))
