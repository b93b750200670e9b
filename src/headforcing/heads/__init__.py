"""Head profiling and classification: which heads are local, anchor or memory heads."""

from headforcing.heads.headmap import HEAD_TYPES, HeadMap, classify_percentile, classify_threshold

__all__ = ["HEAD_TYPES", "HeadMap", "classify_percentile", "classify_threshold"]
