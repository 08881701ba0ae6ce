"""The Prometheus text both agents write (agent_common/prom_text.py): what a scraper parses back."""

from __future__ import annotations

from agent_common.prom_text import Counter, Gauge, Histogram, render


def test_a_unix_time_and_a_wei_amount_keep_their_digits() -> None:
    text = render([Gauge("t_seconds", "a time", lambda: {(): 1764633000.123}),
                   Gauge("w_wei", "an amount", lambda: {(("validator", "5V"),): 12345678901234.0}),
                   Gauge("c_total", "a count kept elsewhere", lambda: {(): 3.0}, kind="counter")])
    assert text.splitlines() == [
        "# HELP t_seconds a time", "# TYPE t_seconds gauge", "t_seconds 1764633000.123",
        "# HELP w_wei an amount", "# TYPE w_wei gauge", 'w_wei{validator="5V"} 12345678901234',
        "# HELP c_total a count kept elsewhere", "# TYPE c_total counter", "c_total 3",
    ]


def test_labels_are_escaped_and_a_histogram_is_cumulative() -> None:
    counter = Counter("x_total", "x")
    counter.inc(reason='say "hi"\n')
    hist = Histogram("h_seconds", "h", (0.1, 1.0))
    for seconds in (0.05, 0.5, 5.0):
        hist.observe(seconds)
    lines = render([counter, hist]).splitlines()
    assert 'x_total{reason="say \\"hi\\"\\n"} 1' in lines
    assert lines[-5:] == ['h_seconds_bucket{le="0.1"} 1', 'h_seconds_bucket{le="1"} 2', 'h_seconds_bucket{le="+Inf"} 3',
                          "h_seconds_sum 5.55", "h_seconds_count 3"]
