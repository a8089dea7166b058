"""runwarden benchmarks: `make bench` (= `python -m benchmarks`); see RESULTS.md."""
