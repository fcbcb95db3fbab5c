"""The demo's display: a ``rich.live`` table on a terminal; one plain line per second elsewhere (CI, pipes)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from .scenario import Demo


class Display:
    def __init__(self, demo: "Demo"):
        self.demo = demo
        self.console = Console(highlight=False)
        self.live: Live | None = None
        self.events: list[str] = []
        self.last_line = 0.0

    @property
    def tty(self) -> bool:
        return self.console.is_terminal

    def say(self, text: str) -> None:
        """A step or result line: printed above the live table (or plainly)."""
        if self.live is not None:
            self.live.console.print(Text(text))
        elif self.tty:
            self.console.print(Text(text))
        else:
            print(text, flush=True)

    def event(self, text: str) -> None:
        self.say(f"[{time.monotonic() - self.demo.t0:5.1f} s] {text}")

    def __enter__(self) -> "Display":
        if self.tty:
            self.live = Live(self.render(), console=self.console, refresh_per_second=4, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.update(self.render())
            self.live.__exit__(*exc)
            self.live = None

    def update(self) -> None:
        if self.live is not None:
            self.live.update(self.render())
            return
        now = time.monotonic()
        if now - self.last_line >= 1.0:
            self.last_line = now
            line = self.plain_line()
            if line:
                print(line, flush=True)

    # --- content ------------------------------------------------------------------------------
    def _state(self, th) -> str:
        if th.started is None:
            return "waiting"
        return "FLOODING" if th.ended is None else "done"

    def plain_line(self, now: float | None = None) -> str:
        """One line of what happened in the last second (``now``: epoch s, for tests)."""
        tel = self.demo.tel
        active = next((th for th in self.demo.threats if th.started and th.ended is None), None)
        now = now or time.time()
        ok, total, _, _ = tel.client(now - 2.0)
        head = f"[{time.monotonic() - self.demo.t0:5.1f} s]"
        if active is None:
            return f"{head} no flood          client last 2 s: {ok}/{total} ok"
        return (f"{head} {active.key:<4} flood  arriving {tel.arriving_pps(active.key):>9,.0f} pps  "
                f"dropped {tel.dropped_pps(active.key):>9,.0f} pps{tel.stale(now)}  client last 2 s: {ok}/{total} ok")

    def render(self) -> Group:
        tel = self.demo.tel
        now = time.time()
        table = Table(title="nodeguard demo: floods against a node with the default policy", title_justify="left",
                      expand=False)
        for col, just in (("threat", "left"), ("state", "left"), ("arriving pps", "right"), ("dropped pps", "right"),
                          ("client ok, last 2 s", "right"), ("client ok, whole flood", "right"),
                          ("client p50", "right")):
            table.add_column(col, justify=just)
        for th in self.demo.threats:
            state = self._state(th)
            live = state == "FLOODING"
            arriving = f"{tel.arriving_pps(th.key):,.0f}" if live else "-"
            dropped = f"{tel.dropped_pps(th.key):,.0f}{tel.stale(now)}" if live else "-"
            recent = "-"
            if live:
                ok, total, _, _ = tel.client(now - 2.0)
                recent = f"{ok}/{total}"
            whole = lat = "-"
            if th.started:
                ok, total, _, lats = tel.client(th.started, th.ended)
                if total:
                    whole = f"{ok}/{total} ({100 * ok / total:.0f} %)"
                if lats:
                    lat = f"{sorted(lats)[len(lats) // 2]:.1f} ms"
            style = "bold red" if live else ("green" if state == "done" else "dim")
            table.add_row(th.title, Text(state, style=style), arriving, dropped, recent, whole, lat)
        ok, total, kinds, _ = tel.client(now - 2.0)
        kinds_text = "  ".join(f"{k} {o}/{n}" for k, (o, n) in sorted(kinds.items()))
        foot = Text(f"legitimate client {self.demo.cli.name if self.demo.node else ''}, last 2 s: {kinds_text or '-'}"
                    f"    elapsed {time.monotonic() - self.demo.t0:.0f} s", style="dim")
        parts = [table, foot]
        if tel.errors:
            parts.append(Text(f"poll errors: {len(tel.errors)} (last: {tel.errors[-1][:100]})", style="yellow"))
        return Group(*parts)
