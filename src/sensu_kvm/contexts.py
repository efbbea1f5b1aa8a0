"""Contexts and measurements: a check judges typed values, never the text it prints.

A check measures values (a ``Measurement``: the domain, the device, the value, and the
``Context`` that judges it). The context holds what one metric means: its name, its unit, its
warning and critical ranges and its bounds, so that it gives both the status of a value and its
perfdata item ``<domain>_<metric>[_<device>]=value[UOM];warn;crit;min;max`` (a label that never
needs quoting: the domain's part comes from ``names.label``). Summaries are made from the
measurements (the busiest domain, how many were measured), not from labels or
finding texts. The idea is nagiosplugin's ``ScalarContext`` and ``Metric`` (a metric names its
context; the context evaluates it and gives its performance data); this is a smaller version of
it for checks that judge many domains at once.
"""

from __future__ import annotations

from typing import NamedTuple

from sensu_kvm.names import perf_label
from sensu_kvm.output import Perf, Status, judge
from sensu_kvm.ranges import Range


class Context(NamedTuple):
    """One metric: its name in perfdata labels, unit, thresholds and bounds.

    ``digits`` rounds the value in perfdata (and where a summary repeats it); 0 keeps its whole
    part (the whole seconds of an age); the status is always judged on the value as measured.
    ``label`` overrides the perfdata label's layout, as a ``str.format`` pattern over ``domain``,
    ``metric`` and ``device``, for the few labels that do not read ``<domain>_<metric>[_<device>]``
    (the host's ``fs_<mount>_used``).
    """

    metric: str
    uom: str = ""
    warning: Range | None = None
    critical: Range | None = None
    minimum: float | None = None
    maximum: float | None = None
    digits: int | None = None
    label: str | None = None

    @property
    def judges(self) -> bool:
        """Whether the context has a threshold at all (a context without one only records)."""
        return self.warning is not None or self.critical is not None

    def evaluate(self, value: float) -> Status:
        """The status of one value: CRITICAL outside the critical range, else WARNING outside the
        warning range, else OK."""
        return judge(value, self.warning, self.critical)

    def __call__(self, value: float, domain: str = "", device: str = "") -> Measurement:
        """A measurement of this metric (for ``domain`` and ``device`` when given): ``domain`` is
        the domain's label form (``record.label``, made by ``names.label``)."""
        return Measurement(self, value, domain, device)


class Measurement(NamedTuple):
    """One measured value, with the context that judges it and gives its perfdata."""

    context: Context
    value: float
    domain: str = ""
    device: str = ""

    @property
    def metric(self) -> str:
        return self.context.metric

    @property
    def uom(self) -> str:
        return self.context.uom

    @property
    def status(self) -> Status:
        return self.context.evaluate(self.value)

    @property
    def reported(self) -> float:
        """The value as perfdata carries it (rounded to the context's digits)."""
        digits = self.context.digits
        if digits is None:
            return self.value
        return int(self.value) if digits == 0 else round(self.value, digits)

    @property
    def label(self) -> str:
        """``<domain>_<metric>[_<device>]`` (the parts that are set), or the context's pattern."""
        device = perf_label(self.device) if self.device else ""  # a disk, an interface, a mount point
        pattern = self.context.label
        if pattern is not None:
            return pattern.format(domain=self.domain, metric=self.metric, device=device)
        label = f"{self.domain}_{self.context.metric}" if self.domain else self.context.metric
        return f"{label}_{device}" if device else label

    def perf(self) -> Perf:
        c = self.context
        return Perf(self.label, self.reported, c.uom, c.warning, c.critical, c.minimum, c.maximum)
