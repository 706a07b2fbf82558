"""Live progress: the engine's lines on the terminal while an item runs, through pytest's capture.

pytest captures what an item writes and shows it only when the item fails; progress must show
while it runs, so each line is written with the capture suspended, as pytest's own live logging
does (``capturemanager.global_and_fixture_disabled()``). Lines come at most one every ``EVERY``
seconds, except the one line each pass ends with and the plan line of each model; ``-q`` keeps
the pass lines alone. None of it goes into results.json.

Under pytest-xdist a worker's terminal goes nowhere (its stdout carries xdist's own channel), so
the controller opens one more execnet channel to each worker as it starts (``pytest_configure_node``)
and writes what arrives on it, each line naming its worker.
"""
from __future__ import annotations

import time
from contextlib import nullcontext

import pytest

EVERY = 5.0  # seconds between two "update" lines
CHANNEL = "massact_progress"  # the key of workerinput that carries a worker's progress channel


class Progress:
    """The engine's ``progress``: filters by level and time, then writes the line or sends it on."""

    def __init__(self, config: pytest.Config, *, every: float | None = None, clock=time.monotonic):
        self.config, self.every, self.clock = config, EVERY if every is None else every, clock
        self.quiet = config.get_verbosity() < 0
        worker = getattr(config, "workerinput", None)
        self.channel = worker.get(CHANNEL) if worker else None
        self.prefix = f"[massact {worker['workerid']}]" if worker else "[massact]"
        self.last = float("-inf")

    def __call__(self, line: str, *, level: str = "update") -> None:
        if self.quiet and level != "pass":
            return
        now = self.clock()
        if level == "update" and now - self.last < self.every:
            return
        self.last = now
        text = f"{self.prefix} {line}"
        if self.channel is not None:
            self.channel.send(text)
        else:
            write(self.config, text)


def write(config: pytest.Config, text: str) -> None:
    """One line on the terminal now, whatever pytest is capturing."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    capture = config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else nullcontext():
        reporter.ensure_newline()  # after "claims/x.toml ": pytest writes the name again for the next item
        if config.get_terminal_writer().width_of_current_line:  # after the dots of -q or xdist
            reporter.line("")
        reporter.write_line(text)


class WorkerLines:
    """On the xdist controller: a progress channel to each worker, its lines written as they come."""

    def __init__(self, config: pytest.Config):
        self.config = config

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node) -> None:
        channel = node.gateway.newchannel()
        # runs in execnet's receiver thread; a closed channel calls it with the end marker, which is ignored
        channel.setcallback(lambda text: write(self.config, text) if isinstance(text, str) else None,
                            endmarker=None)
        node.workerinput[CHANNEL] = channel
