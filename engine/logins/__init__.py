"""Login records and user-behaviour analytics: log readers, baselines, detections."""
