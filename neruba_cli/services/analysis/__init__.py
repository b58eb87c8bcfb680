"""Reading billing against other figures: compare, simulate, usage views and report files."""
