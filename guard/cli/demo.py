"""The demo verb: floods against a Kubernetes-like node in throwaway network namespaces."""

from __future__ import annotations

import sys

import click


@click.command()
@click.option("--quick", is_flag=True, help="Short floods (the whole demo in under a minute; what CI runs).")
@click.option("--plot", type=click.Path(dir_okay=False), default="nodeguard-demo-timeline.png", show_default=True,
              help="Where to write the attack timeline picture (PNG).")
@click.option("--keep", type=click.Path(file_okay=False), default=None,
              help="Keep the attack log and the policy in this directory (default: a temporary one, removed).")
@click.option("--cleanup", "cleanup_only", is_flag=True,
              help="Only remove namespaces left by a demo that was killed (kill -9), then exit.")
def demo(quick: bool, plot: str, keep: str | None, cleanup_only: bool) -> None:
    """Floods against a Kubernetes-like node protected by the default policy, in throwaway network
    namespaces (the host's ruleset is never touched), shown live; then the attack report."""
    from ..demo.run import main as demo_main

    sys.exit(demo_main(quick, plot, cleanup_only, keep))
