"""Prediction from alert history: recurring campaigns, next attack stage, 24 h asset risk, forecast alerts."""

from engine.predict.campaigns import Campaign, find_campaigns
from engine.predict.forecast import Predictions, forecast_alerts, predict
from engine.predict.stages import NextStageModel

__all__ = ["Campaign", "NextStageModel", "Predictions", "find_campaigns", "forecast_alerts", "predict"]
