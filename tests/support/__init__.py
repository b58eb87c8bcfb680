"""What the test modules share: the in-process CLI runner, database fixtures, builders for
catalogs, events and files, shops (set-ups several suites bill against), a generated billing
workload with an independent biller, and helpers for real `neruba` processes.

Test modules import from here, never from each other (tests/test_code_quality.py checks it).
The fixtures in `fixtures.py` are registered for every test by the root conftest.
"""
