"""``nodeguard run``: the one process a node runs.

It applies (or adopts) the policy, then runs three things in one process:

* the **watcher** (guard/watch/) in the main thread: it is the main loop. Its ``heartbeat``
  callback, called once per turn of that loop, pings the systemd watchdog (so a loop that hangs
  stops the pings: no timer thread could notice that), beats ``/healthz``, polls the policy file
  (a Kubernetes ConfigMap update reloads exactly like SIGHUP), keeps the STATUS= line current,
  and supervises the two others;
* the **sampler** (guard/sampler.py) in a thread with its own libnftables context;
* the **metrics** endpoint (guard/metrics.py): one I/O thread for every connection and a worker
  that renders scrapes (guard/httpserve.py), each scrape answered from the watcher's state, the
  sampler's counters and a cheap kernel read (``MetricsProvider``).

A failure in the sampler or the metrics server never stops the watcher: the thread ends, the
heartbeat sees it, logs one line and starts it again after 1, 2, 4 ... 60 s (a part that then
runs for a minute is healthy again). The watcher itself never dies of an error (watch/loop.py).

Here: ``supervisor.py`` (the ``Daemon``: start, signals, the heartbeat, the status line),
``parts.py`` (the sampler and metrics parts, restarted with backoff), ``provider.py`` (what a
scrape reads).

Signals: SIGHUP re-reads, validates and kernel-checks the policy, then installs it in one
state-keeping transaction (``RELOADING=1`` ... ``READY=1``); a bad one is logged as
``FILE:LINE: field: message``, counted, and the rules in place stay. SIGTERM/SIGINT stop the
daemon and leave the rules (``--remove-on-exit`` uninstalls them).
"""
