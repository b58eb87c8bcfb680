"""Lines of TOML paths (tomllib gives none) and near-miss hints: pure functions."""

from __future__ import annotations

import tomllib

from neruba_cli.domain.suggest import close_match, did_you_mean
from neruba_cli.domain.toml_lines import key_lines, line_of

TEXT = '''title = """a "quoted" \\""" and
more""" # not a key = 1
[[plans]]
code = "pro"  # comment [[plans]]
'odd.key' = 'C:\\'
[[plans.charges]]
meter = "a"
tiers = [
  { up_to = 10, unit_amount = "0" }, # { up_to = 99 }
  [1, 2],
  { up_to = inf, nested = { deep = 1979-05-27 07:32:00 } },
]
[[plans.charges]]
meter = "b"
[[plans]]
code = "basic"
[[plans.charges]]
meter = "c"
[defaults.inner]
x.y = 1
'''


def test_every_table_key_and_element_has_its_line() -> None:
    tomllib.loads(TEXT)  # the fixture is valid TOML
    lines = key_lines(TEXT)
    assert lines["title"] == 1
    assert lines["plans"] == lines["plans[0]"] == 3
    assert lines["plans[0].code"] == 4
    assert lines["plans[0].odd.key"] == 5
    assert lines["plans[0].charges[0]"] == 6
    assert lines["plans[0].charges[0].tiers"] == 8
    assert lines["plans[0].charges[0].tiers[0].up_to"] == 9
    assert lines["plans[0].charges[0].tiers[1][1]"] == 10
    assert lines["plans[0].charges[0].tiers[2].nested.deep"] == 11
    assert lines["plans[0].charges[1].meter"] == 14
    assert lines["plans[1].code"] == 16
    assert lines["plans[1].charges[0].meter"] == 18
    assert lines["defaults.inner.x.y"] == 20
    assert "plans[0].charges[0].tiers[3]" not in lines


def test_a_missing_key_falls_back_to_its_table() -> None:
    lines = key_lines(TEXT)
    assert line_of(lines, "plans[1].charges[0].model") == 17
    assert line_of(lines, "plans[0].charges[0].tiers[0].flat_amount") == 9
    assert line_of(lines, "meters") is None


def test_text_the_scan_does_not_follow_keeps_what_it_found() -> None:
    assert key_lines('a = 1\nb = "unterminated') == {"a": 1, "b": 2}
    assert key_lines("") == {}


def test_near_misses() -> None:
    assert close_match("api_call", ["api_calls", "seats"]) == "api_calls"
    assert close_match("API_CALLS", ["api_calls"]) == "api_calls"
    assert close_match("storage", ["api_calls", "seats"]) is None
    assert did_you_mean("seatz", ["seats"]) == "did you mean 'seats'?"
    assert did_you_mean("seats", ["seats"]) == ""
