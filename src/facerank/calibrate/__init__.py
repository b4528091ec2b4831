"""Score calibration: turn a raw cosine into a score that knows each face's neighbourhood.

Inter-class Discrepancy Alignment (IDA-R with anchor support sets, IDA-L with a learned
regressor) and the AS-norm baseline, behind one `Calibrator` interface (`base.py`).
"""
