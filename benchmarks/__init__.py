"""kernkit benchmarks: `python -m benchmarks [--quick] [--only FAMILY]`."""
