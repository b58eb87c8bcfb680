"""Billing runs: what a month bills, the run itself, what it writes, and past runs."""
