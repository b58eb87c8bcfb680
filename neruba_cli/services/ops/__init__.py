"""Operating the product: check, doctor, stats, retention, privacy and the demo."""
