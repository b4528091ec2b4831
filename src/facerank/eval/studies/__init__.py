"""Research studies behind the evaluator and `benchmarks/`: the identity-disjoint calibration
protocols on LFW (`calibration_protocols`, `calibration`, `calibration_select`). Nothing in the
library imports them."""
