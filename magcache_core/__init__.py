"""Core: the MagCache and TeaCache decision rules, ratio curves, calibration statistics, residual store, run state.

Pure torch/numpy: no ComfyUI import here, so it is unit-testable and can drive other hosts.
"""
from .errors import MagCacheInputError
from .ratios import COND, UNCOND, RatioCurves, nearest_interp, validate_ratios
from .decision import MagCacheParams, MagCacheRule, computed_steps
from .calibration import CalibrationRecorder
from .residuals import ResidualStore
from .teacache import TeaCacheParams, TeaCacheRule, fit_coefficients, poly1d, relative_l1, teacache_schedule
from .run import SKIPPED_CHOICES, SKIPPED_DEFAULT, CallContext, RunConfig, RunState, extrapolate_form
from .storage import CalibrationStore

__all__ = [
    "MagCacheInputError", "COND", "UNCOND", "RatioCurves", "nearest_interp", "validate_ratios",
    "MagCacheParams", "MagCacheRule", "computed_steps", "CalibrationRecorder", "ResidualStore",
    "CallContext", "RunConfig", "RunState", "CalibrationStore", "TeaCacheParams", "TeaCacheRule", "poly1d",
    "relative_l1", "teacache_schedule", "fit_coefficients", "SKIPPED_CHOICES", "SKIPPED_DEFAULT", "extrapolate_form",
]
